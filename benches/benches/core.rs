//! The pure core under criterion: the account state machine and the stream codecs.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use saldo_engine::{account::AccountCommand, event::Event, state::ShardState, *};

fn setup() -> (ShardState, Vec<AccountId>) {
    let mut state = ShardState::empty(0, 16);
    let ids: Vec<AccountId> = (0..1_000)
        .map(|i| AccountId::new(&format!("acct-{i}")).unwrap())
        .collect();
    for id in &ids {
        let cmd = OpenAccount {
            account_id: id.clone(),
            currency: Currency::new("BRL").unwrap(),
            overdraft_limit_minor: 0,
            metadata_opt: None,
        };
        state.apply(&Event::AccountOpened {
            cmd,
            at: Timestamp(1),
        });
        let entry = Entry {
            entry_id: MovementId::new(&format!("seed-{id}")).unwrap(),
            account_id: id.clone(),
            kind: EntryKind::Credit,
            amount_minor: i64::MAX / 4,
            description_opt: None,
        };
        let ev = state
            .accounts
            .state(id)
            .unwrap()
            .decide(&AccountCommand::Entry(entry), Timestamp(1))
            .unwrap();
        state.apply(&ev);
    }
    (state, ids)
}

fn transfers(c: &mut Criterion) {
    let (mut state, ids) = setup();
    let mut n: u64 = 0;
    let mut group = c.benchmark_group("core");
    group.throughput(Throughput::Elements(1));
    group.bench_function("transfer_three_phases_decide_apply", |b| {
        b.iter(|| {
            n += 1;
            let (a, z) = (
                &ids[(n % 1_000) as usize],
                &ids[((n * 7 + 1) % 1_000) as usize],
            );
            if a == z {
                return;
            }
            let t = Transfer {
                transfer_id: MovementId::new(&format!("t{n}")).unwrap(),
                debit_account_id: a.clone(),
                credit_account_id: z.clone(),
                amount_minor: 1,
                currency: Currency::new("BRL").unwrap(),
                description_opt: None,
            };
            let at = Timestamp(2);
            let hold = state
                .accounts
                .state(a)
                .unwrap()
                .decide(&AccountCommand::Hold(t.clone(), None), at)
                .unwrap();
            state.apply(&hold);
            let credit = state
                .accounts
                .state(z)
                .unwrap()
                .decide(&AccountCommand::Credit(t.clone()), at)
                .unwrap();
            state.apply(&credit);
            let commit = state
                .accounts
                .state(a)
                .unwrap()
                .decide(&AccountCommand::Commit(t.transfer_id.clone()), at)
                .unwrap();
            state.apply(&commit);
        })
    });
    let t = Transfer {
        transfer_id: MovementId::new("t-codec").unwrap(),
        debit_account_id: ids[0].clone(),
        credit_account_id: ids[1].clone(),
        amount_minor: 12_345,
        currency: Currency::new("BRL").unwrap(),
        description_opt: None,
    };
    let ev = Event::HoldPlaced {
        transfer: t,
        batch_opt: None,
        at: Timestamp(5),
    };
    let mut buf = Vec::with_capacity(1 << 20);
    group.bench_function("event_encode", |b| {
        b.iter(|| {
            if buf.len() > (1 << 20) - 256 {
                buf.clear();
            }
            event::encode_into(&ev, &mut buf)
        })
    });
    let mut payload = Vec::new();
    for _ in 0..1_000 {
        event::encode_into(&ev, &mut payload);
    }
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("record_encode_1000_events", |b| {
        b.iter(|| saldo_persistence::record::encode(0, 1, 1, 1_000, &[0; 32], &payload))
    });
    group.bench_function("event_decode_1000", |b| {
        b.iter(|| event::decode_all(&payload).unwrap())
    });
    group.finish();
}

criterion_group!(benches, transfers);
criterion_main!(benches);
