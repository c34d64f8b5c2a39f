//! How phase messages travel between a node's shard actors.
//!
//! The node sends a cross-shard transfer's next phase to the other shard's actor as soon as
//! the record it depends on is durable ([`Courier::direct`]: a kameo message, in order per
//! pair of shards). The protocol does not count on that order, nor on the message arriving:
//! each transfer has at most one phase in flight, sent only on durable state, and a phase
//! lost with a crash is resent by recovery from the open hold. A [`Courier::new`] carries
//! each message itself: the node simulation holds them back, delivers them in any order, and
//! loses those in flight when it crashes the node, to check exactly that.

use std::{fmt, sync::Arc};

/// The way phase messages go from shard to shard. Cloning is cheap.
#[derive(Clone, Default)]
pub struct Courier(Option<Arc<dyn Fn(u32, Parcel) + Send + Sync>>);

/// The messages of one send to one shard, ready to be delivered.
pub struct Parcel(Box<dyn FnOnce() + Send>);

impl Courier {
    /// Delivers every message at once, in order per pair of shards (production).
    pub fn direct() -> Courier {
        Courier(None)
    }

    /// Hands every message to `carry` with its destination shard: it delivers the parcel
    /// when it likes, or drops it (the message is lost).
    pub fn new(carry: impl Fn(u32, Parcel) + Send + Sync + 'static) -> Courier {
        Courier(Some(Arc::new(carry)))
    }

    /// Sends `deliver` (the messages to shard `to`) on.
    pub(crate) fn send(&self, to: u32, deliver: impl FnOnce() + Send + 'static) {
        match &self.0 {
            None => deliver(),
            Some(carry) => carry(to, Parcel(Box::new(deliver))),
        }
    }
}

impl Parcel {
    /// Delivers the messages to their shard (dropped if the node stopped meanwhile).
    pub fn deliver(self) {
        (self.0)()
    }
}

impl fmt::Debug for Courier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Courier(carried)"
        } else {
            "Courier(direct)"
        })
    }
}

impl fmt::Debug for Parcel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Parcel")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[test]
    fn a_carried_parcel_is_delivered_only_when_its_courier_says() {
        let delivered = Arc::new(Mutex::new(Vec::new()));
        let held: Arc<Mutex<Vec<(u32, Parcel)>>> = Arc::default();
        let courier = Courier::new({
            let held = held.clone();
            move |to, parcel| held.lock().unwrap().push((to, parcel))
        });
        for n in 0..3 {
            let delivered = delivered.clone();
            courier.send(n, move || delivered.lock().unwrap().push(n));
        }
        assert!(delivered.lock().unwrap().is_empty());
        let mut parcels = std::mem::take(&mut *held.lock().unwrap());
        assert_eq!(
            parcels.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        parcels.pop().unwrap().1.deliver();
        parcels.remove(0).1.deliver();
        assert_eq!(*delivered.lock().unwrap(), [2, 0]);
        let direct_delivered = delivered.clone();
        Courier::direct().send(7, move || direct_delivered.lock().unwrap().push(7));
        assert_eq!(*delivered.lock().unwrap(), [2, 0, 7]);
    }
}
