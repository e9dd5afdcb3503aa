use super::*;

const ROOT: &str = "root-of-the-revision";

fn names(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("s{i}")).collect()
}

fn prepared(shadow: &str) -> Event {
    Event::Prepared {
        shadow: shadow.into(),
        root: ROOT.into(),
    }
}

fn committed(shadow: &str, receipt: &str) -> Event {
    Event::Committed {
        shadow: shadow.into(),
        receipt: receipt.into(),
    }
}

#[test]
fn every_shadow_prepared_decides_commit_and_every_receipt_applies() {
    let mut rollout = Rollout::start(ROOT, names(2));
    assert_eq!(rollout.step(prepared("s0")).unwrap(), vec![]);
    assert_eq!(
        rollout.step(prepared("s1")).unwrap(),
        vec![
            Action::LogDecision(Decision::Commit),
            Action::SendCommit("s0".into()),
            Action::SendCommit("s1".into())
        ]
    );
    assert_eq!(rollout.state, State::Committing);
    assert_eq!(rollout.step(committed("s0", ROOT)).unwrap(), vec![]);
    assert_eq!(rollout.step(committed("s1", ROOT)).unwrap(), vec![Action::Finished(State::Applied)]);
    // A late duplicate receipt changes nothing.
    assert_eq!(rollout.step(committed("s1", "other")).unwrap(), vec![]);
    assert_eq!(rollout.shadows["s1"].receipt_root.as_deref(), Some(ROOT));
}

#[test]
fn one_refusal_aborts_everywhere() {
    let mut rollout = Rollout::start(ROOT, names(3));
    rollout.step(prepared("s0")).unwrap();
    rollout
        .step(Event::Refused {
            shadow: "s1".into(),
            reason: "validate hook failed".into(),
        })
        .unwrap();
    let actions = rollout.step(prepared("s2")).unwrap();
    assert_eq!(actions[0], Action::LogDecision(Decision::Abort));
    assert_eq!(actions.iter().filter(|a| matches!(a, Action::SendAbort(_))).count(), 3);
    assert_eq!(rollout.state, State::Failed);
    assert!(rollout.error.as_deref().unwrap().contains("s1: validate hook failed"));
}

#[test]
fn a_staged_root_that_differs_is_a_refusal() {
    let mut rollout = Rollout::start(ROOT, names(1));
    rollout
        .step(Event::Prepared {
            shadow: "s0".into(),
            root: "forged".into(),
        })
        .unwrap();
    assert_eq!(rollout.state, State::Failed);
    assert_eq!(rollout.shadows["s0"].phase, Phase::Refused);
}

#[test]
fn the_deadline_aborts_a_rollout_waiting_for_a_slow_shadow() {
    let mut rollout = Rollout::start(ROOT, names(2));
    rollout.step(prepared("s0")).unwrap();
    let actions = rollout.step(Event::DeadlinePassed).unwrap();
    assert_eq!(actions[0], Action::LogDecision(Decision::Abort));
    assert_eq!(rollout.state, State::Failed);
    assert_eq!(rollout.shadows["s1"].phase, Phase::Refused);
    // The slow shadow's prepare lands afterwards: it is told to abort, nothing else moves.
    assert_eq!(rollout.step(prepared("s1")).unwrap(), vec![Action::SendAbort("s1".into())]);
    assert_eq!(rollout.state, State::Failed);
}

#[test]
fn a_restart_before_the_decision_is_presumed_abort() {
    let mut rollout = Rollout::start(ROOT, names(2));
    rollout.step(prepared("s0")).unwrap();
    rollout.step(Event::Restarted).unwrap();
    assert_eq!(rollout.state, State::Aborted);
    assert_eq!(rollout.decision, Some(Decision::Abort));
}

#[test]
fn a_restart_after_the_decision_sends_the_commits_again() {
    let mut rollout = Rollout::start(ROOT, names(2));
    rollout.step(prepared("s0")).unwrap();
    rollout.step(prepared("s1")).unwrap();
    rollout.step(committed("s0", ROOT)).unwrap();
    assert_eq!(rollout.step(Event::Restarted).unwrap(), vec![Action::SendCommit("s1".into())]);
}

#[test]
fn a_receipt_of_another_root_ends_the_wait_as_incomplete() {
    let mut rollout = Rollout::start(ROOT, names(2));
    rollout.step(prepared("s0")).unwrap();
    rollout.step(prepared("s1")).unwrap();
    rollout.step(committed("s0", "hand-edited")).unwrap();
    assert_eq!(rollout.shadows["s0"].phase, Phase::Mismatch);
    assert_eq!(
        rollout.step(committed("s1", ROOT)).unwrap(),
        vec![Action::Finished(State::Incomplete)]
    );
    assert!(rollout.error.as_deref().unwrap().contains("s0 mismatch"));
}

#[test]
fn an_operator_releases_a_dark_shadow_and_the_rollout_ends() {
    let mut rollout = Rollout::start(ROOT, names(2));
    rollout.step(prepared("s0")).unwrap();
    rollout.step(prepared("s1")).unwrap();
    rollout.step(committed("s0", ROOT)).unwrap();
    assert_eq!(rollout.exits(), vec![Exit::Release("s1".into())]);
    let actions = rollout
        .step(Event::Released {
            shadow: "s1".into(),
            by: "alice".into(),
        })
        .unwrap();
    assert_eq!(actions, vec![Action::Finished(State::Incomplete)]);
    assert!(rollout.exits().is_empty());
    // Releasing again is refused and changes nothing.
    let before = rollout.clone();
    assert!(
        rollout
            .step(Event::Released {
                shadow: "s1".into(),
                by: "alice".into()
            })
            .is_err()
    );
    assert_eq!(rollout, before);
}

#[test]
fn a_shadow_removed_while_waited_for_is_no_longer_a_target() {
    let mut rollout = Rollout::start(ROOT, names(2));
    rollout.step(prepared("s0")).unwrap();
    rollout.step(prepared("s1")).unwrap();
    rollout.step(committed("s0", ROOT)).unwrap();
    rollout.step(Event::Removed { shadow: "s1".into() }).unwrap();
    assert_eq!(rollout.state, State::Applied);
}

#[test]
fn a_commit_without_a_decision_is_invalid_and_changes_nothing() {
    let mut rollout = Rollout::start(ROOT, names(2));
    rollout.step(prepared("s0")).unwrap();
    let before = rollout.clone();
    assert!(rollout.step(committed("s0", ROOT)).is_err());
    assert!(rollout.step(prepared("nobody")).is_err());
    assert_eq!(rollout, before);
}

#[test]
fn names_round_trip() {
    for state in State::ALL {
        assert_eq!(State::parse(state.as_str()), Some(state));
    }
    for phase in Phase::ALL {
        assert_eq!(Phase::parse(phase.as_str()), Some(phase));
    }
    for decision in [Decision::Commit, Decision::Abort] {
        assert_eq!(Decision::parse(decision.as_str()), Some(decision));
    }
}

/// splitmix64: a small deterministic generator, so a failing case can be replayed by its
/// seed without a dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Any event the world could produce, including lost, late, repeated and forged ones.
fn random_event(random: &mut Random, shadows: &[String]) -> Event {
    let shadow = shadows[random.below(shadows.len())].clone();
    let root = if random.below(5) == 0 {
        "other".to_string()
    } else {
        ROOT.to_string()
    };
    match random.below(12) {
        0..=2 => Event::Prepared { shadow, root },
        3 => Event::Refused {
            shadow,
            reason: "no".into(),
        },
        4 => Event::DeadlinePassed,
        5 => Event::Restarted,
        6 => Event::Cancelled { by: "op".into() },
        7 | 8 => Event::Committed { shadow, receipt: root },
        9 => Event::CommitRefused {
            shadow,
            reason: "not staged".into(),
        },
        10 => {
            if random.below(2) == 0 {
                Event::Released { shadow, by: "op".into() }
            } else {
                Event::Removed { shadow }
            }
        }
        _ => Event::AbortAcknowledged { shadow },
    }
}

/// What must hold after every step, whatever happened before.
fn check_invariants(rollout: &Rollout, before: &Rollout, actions: &[Action], logged: &mut Option<Decision>) {
    // The decision is made once and never changes.
    if let Some(decided) = before.decision {
        assert_eq!(rollout.decision, Some(decided), "a decision changed");
    }
    // Terminal states stay terminal.
    if before.state.is_terminal() {
        assert_eq!(rollout.state, before.state, "left a terminal state");
    }
    for (i, action) in actions.iter().enumerate() {
        match action {
            Action::LogDecision(decision) => {
                assert!(logged.is_none(), "a second decision was logged");
                *logged = Some(*decision);
            }
            // Nothing is sent before the decision it follows from is logged.
            Action::SendCommit(_) => assert_eq!(*logged, Some(Decision::Commit), "commit sent without a logged decision"),
            Action::SendAbort(_) => assert!(
                *logged == Some(Decision::Abort) || rollout.decision == Some(Decision::Abort),
                "abort sent without an abort decision"
            ),
            Action::Finished(state) => {
                assert!(state.is_terminal());
                assert_eq!(*state, rollout.state);
                assert!(!before.state.is_terminal(), "finished twice");
                assert_eq!(i, actions.len() - 1, "finishing is the last action");
            }
        }
    }
    assert_eq!(rollout.decision, *logged, "the decision in the journal is the one logged");
    match rollout.state {
        State::Preparing => assert!(rollout.decision.is_none()),
        State::Committing | State::Applied | State::Incomplete => assert_eq!(rollout.decision, Some(Decision::Commit)),
        State::Failed | State::Aborted => assert_eq!(rollout.decision, Some(Decision::Abort)),
    }
    if rollout.state == State::Applied {
        assert!(
            rollout.shadows.values().any(|p| p.phase == Phase::Committed),
            "applied without any proof"
        );
        for (name, progress) in &rollout.shadows {
            assert!(
                matches!(progress.phase, Phase::Committed | Phase::Removed),
                "applied with {name} {}",
                progress.phase.as_str()
            );
            if progress.phase == Phase::Committed {
                assert_eq!(progress.receipt_root.as_deref(), Some(ROOT), "applied without {name}'s proof");
            }
        }
    }
    if rollout.state == State::Committing {
        assert!(
            rollout.shadows.values().any(|p| p.phase == Phase::Prepared),
            "committing with nobody to wait for"
        );
    }
    // A shadow's receipt is only ever recorded under a commit decision.
    for progress in rollout.shadows.values() {
        if progress.receipt_root.is_some() {
            assert_eq!(rollout.decision, Some(Decision::Commit));
        }
    }
}

/// Takes the exits any operator (or the clock) has: the deadline, then releasing every
/// shadow still waited for. Any reachable state must end by them.
fn take_the_exits(rollout: &mut Rollout) {
    rollout.step(Event::DeadlinePassed).unwrap();
    for exit in rollout.exits() {
        match exit {
            Exit::Cancel => unreachable!("the deadline has passed"),
            Exit::Release(shadow) => {
                rollout.step(Event::Released { shadow, by: "op".into() }).unwrap();
            }
        }
    }
    assert!(rollout.state.is_terminal(), "no exit from {:?}", rollout.state);
}

#[test]
fn random_event_sequences_keep_every_invariant_and_always_have_an_exit() {
    let cases: u64 = std::env::var("ETC_SHADOW_ROLLOUT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut events = 0u64;
    let mut reached = std::collections::BTreeMap::<&str, u64>::new();
    for seed in 0..cases {
        let mut random = Random(seed);
        let shadows = names(1 + random.below(4));
        let mut rollout = Rollout::start(ROOT, shadows.clone());
        let mut logged = None;
        for _ in 0..random.below(40) {
            let event = random_event(&mut random, &shadows);
            let before = rollout.clone();
            match rollout.step(event.clone()) {
                Ok(actions) => check_invariants(&rollout, &before, &actions, &mut logged),
                Err(_) => assert_eq!(rollout, before, "a refused event changed the rollout (seed {seed}, {event:?})"),
            }
            events += 1;
        }
        take_the_exits(&mut rollout);
        *reached.entry(rollout.state.as_str()).or_default() += 1;
    }
    // Every terminal state is reached by some sequence: the generator is not blind to any.
    for state in State::ALL.into_iter().filter(|s| s.is_terminal()) {
        assert!(reached.contains_key(state.as_str()), "no sequence ended {}", state.as_str());
    }
    println!("rollout state machine: {cases} random event sequences, {events} events; terminal states reached: {reached:?}");
}
