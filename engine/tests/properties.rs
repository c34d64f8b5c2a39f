//! Property tests of the pure core: random command sequences, with replays and duplicate IDs,
//! never create or destroy money, take each ID at most once, and never leave an account below
//! its allowance (the last is asserted inside `AccountState::apply`).

use proptest::{collection::vec, prelude::*};
use saldo_engine::{account::AccountCommand, event::Event, state::ShardState, *};

const ACCOUNTS: usize = 6;

#[derive(Clone, Debug)]
enum Op {
    Transfer {
        id: u8,
        from: usize,
        to: usize,
        amount: i64,
    },
    Entry {
        id: u8,
        account: usize,
        credit: bool,
        amount: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..40, 0..ACCOUNTS, 0..ACCOUNTS, -5i64..500).prop_map(|(id, from, to, amount)| {
            Op::Transfer {
                id,
                from,
                to,
                amount,
            }
        }),
        (0u8..40, 0..ACCOUNTS, any::<bool>(), -5i64..800).prop_map(
            |(id, account, credit, amount)| Op::Entry {
                id,
                account,
                credit,
                amount
            }
        ),
    ]
}

fn aid(i: usize) -> AccountId {
    AccountId::new(&format!("a{i}")).unwrap()
}

/// A one-shard ledger driven through the same decide/apply as the engine, with the engine's
/// idempotency rule: an ID already recorded is not applied again.
struct Model {
    state: ShardState,
    at: u64,
}

impl Model {
    fn new() -> Model {
        let mut state = ShardState::empty(0, 8);
        for i in 0..ACCOUNTS {
            let cmd = OpenAccount {
                account_id: aid(i),
                currency: Currency::new("EUR").unwrap(),
                overdraft_limit_minor: if i == 0 { 300 } else { 0 },
                metadata_opt: None,
            };
            state.apply(&Event::AccountOpened {
                cmd,
                at: Timestamp(1),
            });
        }
        Model { state, at: 1 }
    }

    fn exec(&mut self, account: &AccountId, cmd: AccountCommand) -> Result<(), Rejection> {
        self.at += 1_000_000;
        let ev = self
            .state
            .accounts
            .state(account)
            .unwrap()
            .decide(&cmd, Timestamp(self.at))?;
        self.state.apply(&ev);
        Ok(())
    }

    fn run(&mut self, op: &Op) {
        match op.clone() {
            Op::Transfer {
                id,
                from,
                to,
                amount,
            } => {
                let tid = MovementId::new(&format!("m{id}")).unwrap();
                if self.state.movements.contains_key(&tid) || from == to || amount <= 0 {
                    return; // replay, or refused by validation: nothing happens
                }
                let t = Transfer {
                    transfer_id: tid.clone(),
                    debit_account_id: aid(from),
                    credit_account_id: aid(to),
                    amount_minor: amount,
                    currency: Currency::new("EUR").unwrap(),
                    description_opt: None,
                };
                match self.exec(&aid(from), AccountCommand::Hold(t.clone(), None)) {
                    Ok(()) => {
                        self.exec(&aid(to), AccountCommand::Credit(t.clone()))
                            .unwrap();
                        self.exec(&aid(from), AccountCommand::Commit(tid)).unwrap();
                    }
                    // The engine records a refusal so that a retry gets the same answer.
                    Err(reason) => self.state.apply(&Event::TransferRejected {
                        transfer: t,
                        reason,
                        at: Timestamp(self.at),
                    }),
                }
            }
            Op::Entry {
                id,
                account,
                credit,
                amount,
            } => {
                let eid = MovementId::new(&format!("m{id}")).unwrap();
                if self.state.movements.contains_key(&eid) || amount <= 0 {
                    return;
                }
                let kind = if credit {
                    EntryKind::Credit
                } else {
                    EntryKind::Debit
                };
                let e = Entry {
                    entry_id: eid,
                    account_id: aid(account),
                    kind,
                    amount_minor: amount,
                    description_opt: None,
                };
                if let Err(reason) = self.exec(&aid(account), AccountCommand::Entry(e.clone())) {
                    self.state.apply(&Event::EntryRejected {
                        entry: e,
                        reason,
                        at: Timestamp(self.at),
                    });
                }
            }
        }
    }

    fn external_minor(&self) -> i128 {
        self.state
            .movements
            .values()
            .filter(|m| m.status == MovementStatus::Committed)
            .map(|m| match &m.body {
                MovementBody::Entry(e) if e.kind == EntryKind::Credit => i128::from(e.amount_minor),
                MovementBody::Entry(e) => -i128::from(e.amount_minor),
                MovementBody::Transfer(_) => 0,
            })
            .sum()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn transfers_never_create_or_destroy_money(ops in vec(op(), 0..300)) {
        let mut model = Model::new();
        for op in &ops {
            model.run(op);
            prop_assert_eq!(model.state.total_minor("EUR"), model.external_minor());
        }
        // Replaying the whole sequence (client retries) changes nothing: each ID at most once.
        let balances_before: Vec<i64> = (0..ACCOUNTS).map(|i| model.state.accounts.state(&aid(i)).unwrap().balance_minor()).collect();
        for op in &ops {
            model.run(op);
        }
        let balances_after: Vec<i64> = (0..ACCOUNTS).map(|i| model.state.accounts.state(&aid(i)).unwrap().balance_minor()).collect();
        prop_assert_eq!(balances_before, balances_after);
        for i in 0..ACCOUNTS {
            let a = &model.state.accounts.state(&aid(i)).unwrap();
            prop_assert!(a.balance_minor() - a.held_minor() >= -300);
            prop_assert_eq!(a.held_minor(), 0);
        }
    }

    #[test]
    fn a_snapshot_round_trips_to_the_same_state(ops in vec(op(), 0..120)) {
        let mut model = Model::new();
        for op in &ops {
            model.run(op);
        }
        let decoded = ShardState::decode(&model.state.encode()).unwrap();
        prop_assert_eq!(decoded, model.state);
    }
}

/// Amounts at the edges of the balance type: where sums in `apply` used to overflow.
fn extreme_amount() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MAX),
        (i64::MAX - 1_000)..=i64::MAX,
        Just(i64::MAX / 2 + 1),
        // 100,000,000,000,000.00 in a 2-decimal currency: the reproduced poison pill.
        Just(10_000_000_000_000_000),
        1i64..1_000,
    ]
}

/// Operations that keep holds open across other operations (as cross-shard transfers and
/// atomic batches do), so that `held` and credits pile up.
#[derive(Clone, Debug)]
enum EdgeOp {
    Hold {
        from: usize,
        to: usize,
        amount: i64,
    },
    /// Credits and commits (or releases, when the credit is refused) the oldest open hold.
    Settle,
    Entry {
        account: usize,
        credit: bool,
        amount: i64,
    },
}

fn edge_op() -> impl Strategy<Value = EdgeOp> {
    prop_oneof![
        (0..ACCOUNTS, 0..ACCOUNTS, extreme_amount()).prop_map(|(from, to, amount)| EdgeOp::Hold {
            from,
            to,
            amount
        }),
        Just(EdgeOp::Settle),
        (0..ACCOUNTS, any::<bool>(), extreme_amount()).prop_map(|(account, credit, amount)| {
            EdgeOp::Entry {
                account,
                credit,
                amount,
            }
        }),
    ]
}

/// A one-shard ledger whose accounts have overdraft limits near the maximum, driven through
/// decide/apply on one UTC day, recording every event so that the stream can be replayed.
struct EdgeModel {
    state: ShardState,
    events: Vec<Event>,
    open: std::collections::VecDeque<Transfer>,
    next_id: u64,
    external_minor: i128,
    at: u64,
}

impl EdgeModel {
    fn new() -> EdgeModel {
        let mut model = EdgeModel {
            state: ShardState::empty(0, 4),
            events: Vec::new(),
            open: std::collections::VecDeque::new(),
            next_id: 0,
            external_minor: 0,
            at: 1_700_000_000_000_000,
        };
        for i in 0..ACCOUNTS {
            let overdraft_limit_minor = match i {
                0 => i64::MAX,
                1 => i64::MAX - 5,
                2 => i64::MAX / 2,
                _ => 0,
            };
            model.record(Event::AccountOpened {
                cmd: OpenAccount {
                    account_id: aid(i),
                    currency: Currency::new("BRL").unwrap(),
                    overdraft_limit_minor,
                    metadata_opt: None,
                },
                at: Timestamp(model.at),
            });
        }
        model
    }

    fn record(&mut self, ev: Event) {
        self.state.apply(&ev);
        self.events.push(ev);
    }

    fn exec(&mut self, account: usize, cmd: AccountCommand) -> Result<(), Rejection> {
        // One microsecond apart: every operation falls on the same UTC day.
        self.at += 1;
        let ev = self
            .state
            .accounts
            .state(&aid(account))
            .unwrap()
            .decide(&cmd, Timestamp(self.at))?;
        self.record(ev);
        Ok(())
    }

    fn run(&mut self, op: &EdgeOp) {
        self.next_id += 1;
        let id = MovementId::new(&format!("x{}", self.next_id)).unwrap();
        match *op {
            EdgeOp::Hold { from, to, amount } if from != to => {
                let t = Transfer {
                    transfer_id: id,
                    debit_account_id: aid(from),
                    credit_account_id: aid(to),
                    amount_minor: amount,
                    currency: Currency::new("BRL").unwrap(),
                    description_opt: None,
                };
                if self
                    .exec(from, AccountCommand::Hold(t.clone(), None))
                    .is_ok()
                {
                    self.open.push_back(t);
                }
            }
            EdgeOp::Hold { .. } => {}
            EdgeOp::Settle => {
                let Some(t) = self.open.pop_front() else {
                    return;
                };
                let (from, to) = (index(&t.debit_account_id), index(&t.credit_account_id));
                let finish = match self.exec(to, AccountCommand::Credit(t.clone())) {
                    Ok(()) => AccountCommand::Commit(t.transfer_id.clone()),
                    Err(reason) => AccountCommand::Release(t.transfer_id.clone(), reason),
                };
                self.exec(from, finish).expect("an open hold settles");
            }
            EdgeOp::Entry {
                account,
                credit,
                amount,
            } => {
                let kind = if credit {
                    EntryKind::Credit
                } else {
                    EntryKind::Debit
                };
                let e = Entry {
                    entry_id: id,
                    account_id: aid(account),
                    kind,
                    amount_minor: amount,
                    description_opt: None,
                };
                if self.exec(account, AccountCommand::Entry(e)).is_ok() {
                    let signed = i128::from(amount);
                    self.external_minor += if credit { signed } else { -signed };
                }
            }
        }
    }
}

fn index(id: &AccountId) -> usize {
    id.as_str()[1..].parse().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Issue 13, defect 1: amounts near `i64::MAX`, overdraft limits near the maximum, long
    /// same-day sequences. `decide` refuses whatever would overflow, so `apply` never panics,
    /// money is conserved, and the recorded stream folds again into the same state (the node
    /// restarts).
    #[test]
    fn extreme_amounts_never_stop_the_ledger_and_conserve_money(
        ops in vec(edge_op(), 0..400)
    ) {
        let mut model = EdgeModel::new();
        for op in &ops {
            model.run(op);
            prop_assert_eq!(model.state.total_minor("BRL"), model.external_minor);
        }
        while !model.open.is_empty() {
            model.run(&EdgeOp::Settle);
        }
        prop_assert_eq!(model.state.total_minor("BRL"), model.external_minor);
        let mut replayed = ShardState::empty(0, 4);
        for ev in &model.events {
            prop_assert_eq!(replayed.try_apply(ev), Ok(()));
        }
        prop_assert_eq!(&replayed, &model.state);
        let decoded = ShardState::decode(&model.state.encode()).unwrap();
        prop_assert_eq!(decoded, model.state);
    }
}
