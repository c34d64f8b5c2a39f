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
        let ev = self.state.accounts[account].decide(&cmd, Timestamp(self.at))?;
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
        let balances_before: Vec<i64> = (0..ACCOUNTS).map(|i| model.state.accounts[&aid(i)].balance_minor()).collect();
        for op in &ops {
            model.run(op);
        }
        let balances_after: Vec<i64> = (0..ACCOUNTS).map(|i| model.state.accounts[&aid(i)].balance_minor()).collect();
        prop_assert_eq!(balances_before, balances_after);
        for i in 0..ACCOUNTS {
            let a = &model.state.accounts[&aid(i)];
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
