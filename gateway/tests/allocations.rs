//! Heap allocations on the hot path of `POST /v1/transfers`, counted by a global allocator that
//! counts on the test's own thread only.
//!
//! The gateway's own share is pinned: parsing the body allocates nothing (its strings borrow
//! from the body), the answer is a handful of allocations, and the admission middleware and
//! routing of `GET /healthz` stay within their budget. A whole transfer through the router,
//! engine included, is printed, not asserted: the engine's share is its own to change.
//!
//! Everything runs on a current-thread runtime, so the engine's tasks are counted too when
//! they run on this thread; nothing here measures time.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    future::poll_fn,
    sync::Arc,
};

use axum::{
    body::Body,
    http::{Request, StatusCode},
    response::Response,
    Router,
};
use gateway::{
    api::{self, TransferRequest},
    auth::Authenticator,
    config::Config,
    extract::parse_json,
    routes, AppState,
};
use saldo_engine::types::{
    AccountId, Currency, MovementBody, MovementId, MovementStatus, MovementView, Timestamp,
    Transfer,
};
use saldo_persistence::{snapshot::memory::MemorySnapshotStore, wal::memory::MemoryWal};
use tower_service::Service;

/// Counts the allocations (and reallocations) of the threads that turned counting on.
struct CountingAllocator;

thread_local! {
    /// Whether this thread counts (const-initialized, no destructor: safe inside `alloc`).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations counted on this thread.
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded to `System` unchanged; counting touches only thread-locals
// that never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Returns `f`'s result and the allocations it made on this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    COUNT.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let value = f();
    COUNTING.with(|on| on.set(false));
    (value, COUNT.with(Cell::get))
}

/// Returns the result of `fut` and the allocations made on this thread while it ran.
async fn allocations_async<T>(fut: impl std::future::Future<Output = T>) -> (T, u64) {
    COUNT.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let value = fut.await;
    COUNTING.with(|on| on.set(false));
    (value, COUNT.with(Cell::get))
}

const TRANSFER_BODY: &str =
    r#"{"id":"t-1","from":"alice","to":"bob","amount":"12.50","currency":"BRL"}"#;

fn committed_transfer() -> MovementView {
    MovementView {
        body: MovementBody::Transfer(Transfer {
            transfer_id: MovementId::new("t-1").expect("valid id"),
            debit_account_id: AccountId::new("alice").expect("valid id"),
            credit_account_id: AccountId::new("bob").expect("valid id"),
            amount_minor: 1_250,
            currency: Currency::new("BRL").expect("known currency"),
            description_opt: None,
        }),
        status: MovementStatus::Committed,
        rejection_opt: None,
        created_at: Timestamp(1_790_000_000_000_000),
        balance_after_minor_opt: None,
    }
}

#[test]
fn parsing_a_transfer_request_copies_none_of_its_strings() {
    let body = TRANSFER_BODY.as_bytes();
    let (parsed, num_allocations) = allocations(|| parse_json::<TransferRequest>(body));
    let req = parsed.expect("a valid transfer");
    assert_eq!(&*req.from, "alice");
    assert_eq!(&*req.amount.0, "12.50");
    assert_eq!(num_allocations, 0, "the strings borrow from the body");
}

#[test]
fn a_transfer_answer_is_serialized_once_into_one_buffer() {
    let view = committed_transfer();
    let (response, num_allocations) = allocations(|| {
        let body = api::transfer_response(&view).expect("a transfer");
        routes::json(StatusCode::CREATED, &body)
    });
    assert_eq!(response.status(), StatusCode::CREATED);
    // The timestamp's text, the buffer, the `Bytes` that shares it, the boxed body and the
    // header map's two tables; none per field of the answer, no growth of the buffer.
    println!("a transfer's answer: {num_allocations} allocations");
    assert!(num_allocations <= 6, "{num_allocations} allocations");
}

/// Sends `req` through `router` as hyper would, and returns the answer with the allocations
/// made on this thread meanwhile.
async fn call(router: &Router, req: Request<Body>) -> (Response, u64) {
    let mut service = router.clone();
    poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut service, cx))
        .await
        .expect("a router is always ready");
    allocations_async(async move { service.call(req).await.expect("infallible") }).await
}

fn post(uri: &str, body: String) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("a valid request")
}

fn router_without_ledger() -> (Router, AppState) {
    let state = AppState::new(Authenticator::none(), Config::default().limits);
    (gateway::router(state.clone()), state)
}

#[tokio::test(flavor = "current_thread")]
async fn routing_and_admission_stay_within_their_allocations() {
    let (router, _state) = router_without_ledger();
    let healthz = || Request::get("/healthz").body(Body::empty()).expect("valid");
    // The first call builds what axum caches.
    let _ = call(&router, healthz()).await;
    let (response, num_allocations) = call(&router, healthz()).await;
    assert_eq!(response.status(), StatusCode::OK);
    // Mostly axum's: the route's service cloned and boxed twice over, its futures boxed, the
    // extensions (original URI, matched path, URL parameters); then the admission future and
    // the answer (its `String`, the buffer, bytes, body, header map). It was 23 with
    // `middleware::from_fn`.
    println!("GET /healthz through the router: {num_allocations} allocations");
    assert!(num_allocations <= 21, "{num_allocations} allocations");
}

#[tokio::test(flavor = "current_thread")]
async fn a_transfer_through_the_router_is_counted() {
    let (router, state) = router_without_ledger();
    let mut config = Config::default();
    config.engine.shards = 1;
    let ledger = saldo_engine::Ledger::open(
        config.engine_config(),
        Arc::new(MemoryWal::new()),
        Arc::new(MemorySnapshotStore::new()),
    )
    .await
    .expect("an empty ledger opens");
    state.set_ledger(ledger);
    for (id, overdraft) in [("alice", "1000000.00"), ("bob", "0")] {
        let body = format!(r#"{{"id":"{id}","currency":"BRL","overdraft_limit":"{overdraft}"}}"#);
        let (response, _) = call(&router, post("/v1/accounts", body)).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let mut counts = Vec::new();
    for i in 0..20 {
        let body = format!(
            r#"{{"id":"t-{i}","from":"alice","to":"bob","amount":"1.00","currency":"BRL"}}"#
        );
        let (response, num_allocations) = call(&router, post("/v1/transfers", body)).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        counts.push(num_allocations);
    }
    // Not asserted: most of these are the engine's (and the engine is its own to change). It
    // was about 84 a transfer before the gateway's hot path was trimmed, about 56 after.
    println!("POST /v1/transfers through the router, engine included: {counts:?} allocations");
    if let Some(ledger) = state.ledger_opt() {
        ledger.shutdown().await;
    }
}
