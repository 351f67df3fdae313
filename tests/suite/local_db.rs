//! The embedded store and inbox: queue semantics (delay, visibility expiry and
//! redelivery, receive count, dead-lettering) and store semantics (compare-and-swap,
//! lease, dedup, outbox claims, named leases), on a manual clock; durability across a
//! reopen.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bluegreen::contract::Entry;
use bluegreen::flow::{Color, ServiceState, Timestamp};
use bluegreen::local::{LocalDb, QueueOptions};
use bluegreen::ports::Clock;
use bluegreen::ports::{Inbox, Lease, PortError, Store};

struct Manual(Arc<AtomicU64>);

impl Manual {
    fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(self.0.load(Ordering::SeqCst))
    }
}

fn db() -> (LocalDb, Manual) {
    let (clock, manual) = clock();
    let options = QueueOptions {
        visibility: Duration::from_secs(30),
        max_receives: 3,
        ..QueueOptions::default()
    };
    (LocalDb::in_memory(clock, options).expect("db"), manual)
}

fn clock() -> (Clock, Manual) {
    let t = Arc::new(AtomicU64::new(1_700_000_000_000));
    let c = t.clone();
    (
        Arc::new(move || Timestamp::from_millis(c.load(Ordering::SeqCst))),
        Manual(t),
    )
}

const NOW: Duration = Duration::ZERO;

#[tokio::test]
async fn a_delayed_message_is_invisible_until_its_delay_passes() {
    let (db, clock) = db();
    db.send("tick".into(), Duration::from_secs(90))
        .await
        .expect("send");
    assert!(db.receive(10, NOW, NOW).await.expect("receive").is_empty());
    clock.advance(89_999);
    assert!(db.receive(10, NOW, NOW).await.expect("receive").is_empty());
    clock.advance(1);
    let got = db.receive(10, NOW, NOW).await.expect("receive");
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].body.as_str(), got[0].receive_count), ("tick", 1));
}

#[tokio::test]
async fn a_received_message_reappears_when_its_visibility_expires() {
    let (db, clock) = db();
    db.send("m".into(), NOW).await.expect("send");
    let first = db.receive(10, NOW, NOW).await.expect("receive");
    assert_eq!(first.len(), 1);
    assert!(
        db.receive(10, NOW, NOW).await.expect("receive").is_empty(),
        "hidden while worked on"
    );
    clock.advance(30_000);
    let again = db.receive(10, NOW, NOW).await.expect("receive");
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, first[0].message_id);
    assert_eq!(again[0].receive_count, 2);
    // The first receipt is stale now: deleting with it must not lose the message.
    db.delete(&first[0].receipt).await.expect("delete");
    assert_eq!(db.depth().expect("depth"), 1);
    db.delete(&again[0].receipt).await.expect("delete");
    assert_eq!(db.depth().expect("depth"), 0);
}

#[tokio::test]
async fn a_message_received_more_than_max_receives_times_is_dead_lettered() {
    let (db, clock) = db();
    db.send("poison".into(), NOW).await.expect("send");
    for n in 1..=3 {
        let got = db.receive(1, NOW, NOW).await.expect("receive");
        assert_eq!(got[0].receive_count, n);
        db.set_visibility(&got[0].receipt, Duration::ZERO)
            .await
            .expect("release");
    }
    clock.advance(1);
    assert!(
        db.receive(10, NOW, NOW).await.expect("receive").is_empty(),
        "not handed out a fourth time"
    );
    let dead = db.dead_letters().expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].body.as_str(), dead[0].receive_count),
        ("poison", 3)
    );
    assert_eq!(db.depth().expect("depth"), 0);
}

#[tokio::test]
async fn changing_visibility_hides_or_releases_a_message() {
    let (db, clock) = db();
    db.send("m".into(), NOW).await.expect("send");
    let got = db.receive(1, NOW, NOW).await.expect("receive");
    db.set_visibility(&got[0].receipt, Duration::from_secs(120))
        .await
        .expect("extend");
    clock.advance(60_000);
    assert!(
        db.receive(1, NOW, NOW).await.expect("receive").is_empty(),
        "the heartbeat keeps it hidden"
    );
    db.set_visibility(&got[0].receipt, Duration::ZERO)
        .await
        .expect("release");
    assert_eq!(db.receive(1, NOW, NOW).await.expect("receive").len(), 1);
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_message_arrives() {
    let (db, _clock) = db();
    let sender = db.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sender.send("late".into(), NOW).await.expect("send");
    });
    let got = db
        .receive(10, Duration::from_secs(5), Duration::ZERO)
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
}

#[tokio::test]
async fn commits_compare_and_swap_on_the_version() {
    let (db, clock) = db();
    let stored = db.load("web", Color::Blue).await.expect("load");
    assert_eq!(stored.version, 0);
    let state = ServiceState::new("web", Color::Green);
    assert_eq!(
        db.commit(
            "web",
            crate::common::commit_of(&state, 0, "a", clock.now(), None, &[])
        )
        .await,
        Ok(1)
    );
    assert_eq!(
        db.commit(
            "web",
            crate::common::commit_of(&state, 0, "a", clock.now(), None, &[])
        )
        .await,
        Err(PortError::Conflict)
    );
    assert_eq!(
        db.commit(
            "web",
            crate::common::commit_of(&state, 1, "a", clock.now(), None, &[])
        )
        .await,
        Ok(2)
    );
    let stored = db.load("web", Color::Blue).await.expect("load");
    assert_eq!((stored.version, stored.state.live), (2, Color::Green));
}

#[tokio::test]
async fn another_owners_live_lease_blocks_commits_until_released_or_expired() {
    let (db, clock) = db();
    let state = ServiceState::new("web", Color::Blue);
    db.commit(
        "web",
        crate::common::commit_of(&state, 0, "a", clock.now(), None, &[]),
    )
    .await
    .expect("a takes the lease");
    assert_eq!(
        db.commit(
            "web",
            crate::common::commit_of(&state, 1, "b", clock.now(), None, &[])
        )
        .await,
        Err(PortError::Conflict)
    );
    let fence = db.fence("web").await.expect("fence");
    assert_eq!((fence.version, fence.owner.as_deref()), (1, Some("a")));
    db.release("web", "b").await.expect("not b's to release");
    assert_eq!(
        db.fence("web").await.expect("fence").owner.as_deref(),
        Some("a")
    );
    clock.advance(30_001);
    assert_eq!(
        db.commit(
            "web",
            crate::common::commit_of(&state, 1, "b", clock.now(), None, &[])
        )
        .await,
        Ok(2),
        "expired lease"
    );
    db.release("web", "b").await.expect("release");
    assert_eq!(db.fence("web").await.expect("fence").owner, None);
    assert_eq!(
        db.commit(
            "web",
            crate::common::commit_of(&state, 2, "a", clock.now(), None, &[])
        )
        .await,
        Ok(3)
    );
}

#[tokio::test]
async fn a_dedup_key_is_committed_once_and_remembered() {
    let (db, clock) = db();
    let state = ServiceState::new("web", Color::Blue);
    db.commit(
        "web",
        crate::common::commit_of(&state, 0, "a", clock.now(), Some("event:1"), &[]),
    )
    .await
    .expect("first");
    assert!(db.seen("web", "event:1").await.expect("seen"));
    assert!(
        !db.seen("api", "event:1").await.expect("seen"),
        "keys are per service"
    );
    assert_eq!(
        db.commit(
            "web",
            crate::common::commit_of(&state, 1, "a", clock.now(), Some("event:1"), &[])
        )
        .await,
        Err(PortError::Duplicate),
        "a replay loses the race instead of applying twice"
    );
}

fn entry(id: &str) -> Entry {
    Entry {
        source: "bluegreen".into(),
        detail_type: "Deployment Started",
        detail: "{}".into(),
        resources: vec![],
        event_id: id.into(),
        time: "2026-11-26T10:00:00.000Z".into(),
    }
}

fn entries(claimed: &[bluegreen::ports::Claimed]) -> Vec<Entry> {
    claimed.iter().map(|c| c.entry.clone()).collect()
}

fn claim(owner: &str, now: Timestamp) -> Lease<'_> {
    Lease {
        owner,
        until: now.plus(Duration::from_secs(30)),
        now,
    }
}

#[tokio::test]
async fn the_outbox_keeps_unpublished_events_in_order() {
    let (db, clock) = db();
    let state = ServiceState::new("web", Color::Blue);
    let events = [entry("web-1:1"), entry("web-1:2"), entry("web-1:3")];
    db.commit(
        "web",
        crate::common::commit_of(&state, 0, "a", clock.now(), None, &events),
    )
    .await
    .expect("commit");
    let claimed = db.claim_outbox("web", claim("a", clock.now())).await;
    let claimed = claimed.expect("claim");
    assert_eq!(entries(&claimed), events);
    db.outbox_done("web", &[claimed[0].key.clone(), claimed[2].key.clone()])
        .await
        .expect("done");
    let again = db.claim_outbox("web", claim("a", clock.now())).await;
    assert_eq!(entries(&again.expect("claim")), [entry("web-1:2")]);
}

#[tokio::test]
async fn a_claimed_outbox_entry_goes_to_no_other_publisher_until_the_claim_expires() {
    let (db, clock) = db();
    let state = ServiceState::new("web", Color::Blue);
    db.commit(
        "web",
        crate::common::commit_of(&state, 0, "a", clock.now(), None, &[entry("web-1:1")]),
    )
    .await
    .expect("commit");
    let first = db.claim_outbox("web", claim("a", clock.now())).await;
    assert_eq!(entries(&first.expect("claim")), [entry("web-1:1")]);
    let second = db.claim_outbox("web", claim("b", clock.now())).await;
    assert_eq!(
        entries(&second.expect("claim")),
        [],
        "a second publisher gets nothing"
    );
    // The first publisher died between claiming and publishing: after the claim
    // expires, another one publishes the entry (once).
    clock.advance(30_001);
    let third = db.claim_outbox("web", claim("b", clock.now())).await;
    assert_eq!(entries(&third.expect("claim")), [entry("web-1:1")]);
}

#[tokio::test]
async fn a_named_lease_has_one_holder_until_it_expires() {
    let (db, clock) = db();
    let lease = |owner, now: Timestamp| Lease {
        owner,
        until: now.plus(Duration::from_secs(60)),
        now,
    };
    assert!(
        db.try_lease("reconciler", lease("a", clock.now()))
            .await
            .expect("a")
            .is_some()
    );
    assert!(
        db.try_lease("reconciler", lease("b", clock.now()))
            .await
            .expect("b")
            .is_none()
    );
    assert!(
        db.try_lease("reconciler", lease("a", clock.now()))
            .await
            .expect("a renews")
            .is_some()
    );
    clock.advance(60_001);
    assert!(
        db.try_lease("reconciler", lease("b", clock.now()))
            .await
            .expect("b takes over")
            .is_some()
    );
    assert!(
        db.try_lease("reconciler", lease("a", clock.now()))
            .await
            .expect("a is out")
            .is_none()
    );
}

#[tokio::test]
async fn state_outbox_and_queue_survive_a_reopen() {
    let dir = std::env::temp_dir().join(format!("bluegreen-db-{}-{}", std::process::id(), line!()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("state.db");
    let _ = std::fs::remove_file(&path);
    let (clock, manual) = clock();
    {
        let db = LocalDb::open(&path, clock.clone(), QueueOptions::default()).expect("open");
        let state = ServiceState::new("web", Color::Green);
        db.commit(
            "web",
            crate::common::commit_of(&state, 0, "a", manual.now(), Some("k"), &[entry("web-1:1")]),
        )
        .await
        .expect("commit");
        db.send("pending".into(), Duration::from_secs(5))
            .await
            .expect("send");
    }
    let db = LocalDb::open(&path, clock, QueueOptions::default()).expect("reopen");
    let stored = db.load("web", Color::Blue).await.expect("load");
    assert_eq!((stored.version, stored.state.live), (1, Color::Green));
    assert!(db.seen("web", "k").await.expect("seen"));
    let claimed = db.claim_outbox("web", claim("b", manual.now())).await;
    assert_eq!(claimed.expect("claim").len(), 1);
    manual.advance(5_000);
    assert_eq!(db.receive(10, NOW, NOW).await.expect("receive").len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two processes open a fresh state directory at once (`bluegreen local` and
/// `bluegreen local deploy`): switching the file to WAL takes an exclusive lock that
/// SQLite does not wait for, so each open must wait for it itself.
#[test]
fn many_first_opens_of_one_file_at_once_all_succeed() {
    let dir = std::env::temp_dir().join(format!("bluegreen-db-opens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for round in 0..20 {
        let path = dir.join(format!("state-{round}.db"));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let opens: Vec<_> = (0..8)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    LocalDb::open(&path, clock().0, QueueOptions::default()).map(|_| ())
                })
            })
            .collect();
        for open in opens {
            let opened = open.join().expect("no panic");
            assert!(opened.is_ok(), "round {round}: {opened:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
