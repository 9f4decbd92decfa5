//! The store's tests: storage, reading, links and live ticks together.

use super::*;
use crate::inspector::trace::TraceParent;
use crate::inspector::{Body, EXTERNAL, Kind};

fn config(memory: usize) -> InspectorConfig {
    let mut config = InspectorConfig::default();
    config.memory = memory;
    config.mask_headers = vec!["authorization".into()];
    config
}

fn exchange(path: &str, body: &str) -> Exchange {
    let mut e = Exchange::begun("orders".into(), "gateway".into(), Kind::Http);
    let mut headers = hyper::HeaderMap::new();
    headers.insert("authorization", "Bearer secret".parse().unwrap());
    e.method = "POST".into();
    e.path = path.into();
    e.status = Some(201);
    e.request_body = Body::new(body.as_bytes().to_vec(), body.len() as u64, false);
    e.request_headers = crate::inspector::Headers::new(&headers);
    e
}

#[test]
fn filters_by_service_method_status_and_text() {
    let store = Store::new(config(1 << 20), 2).unwrap();
    store.add(0, exchange("/orders", r#"{"item":"tea"}"#));
    store.add(1, exchange("/health", ""));
    let count = |narrow: fn(&mut Filter)| {
        let mut filter = Filter::default();
        narrow(&mut filter);
        store.list(&filter).len()
    };
    assert_eq!(count(|_| ()), 2);
    assert_eq!(count(|f| f.text = Some("TEA".into())), 1);
    assert_eq!(count(|f| f.status = Some("2".into())), 2);
    assert_eq!(count(|f| f.status = Some("404".into())), 0);
    assert_eq!(count(|f| f.method = Some("get".into())), 0);
    assert_eq!(count(|f| f.service = Some("gateway".into())), 2);
    assert_eq!(count(|f| f.after = Some(1)), 1);
}

#[test]
fn keeps_within_the_memory_cap_and_masks() {
    let store = Store::new(config(4096), 1).unwrap();
    for i in 0..100 {
        let open = store.add(0, exchange(&format!("/orders/{i}"), &"x".repeat(500)));
        store.finish(open, None, |e| e.complete = true);
    }
    let kept = store.list(&Filter::default());
    assert!(kept.len() < 10, "{}", kept.len());
    assert_eq!(kept.last().unwrap().path, "/orders/99");
    let shown = kept[0].request_headers.get("authorization").unwrap();
    assert!(
        shown.len() == "Bearer secret".len() && shown.ends_with("****"),
        "{shown}"
    );
    let whole = store.get_unmasked(kept.last().unwrap().id).unwrap();
    assert_eq!(
        whole.request_headers.get("authorization").as_deref(),
        Some("Bearer secret")
    );
}

#[test]
fn pages_walk_every_match_once_in_order_whichever_shard_kept_it() {
    let store = Store::new(config(1 << 20), 2).unwrap();
    for i in 0..300 {
        let mut e = exchange(&format!("/orders/{i}"), "");
        if i % 3 == 0 {
            e.service = "payments".into();
        }
        let open = store.add(i % 2, e);
        store.finish(open, None, |_| ());
    }
    let filter = Filter {
        service: Some("orders".into()),
        ..Filter::default()
    };
    let (mut seen, mut cursor, mut pages) = (Vec::new(), Some(0), 0);
    while let Some(after) = cursor {
        let page = store.page(&filter, after, 16);
        assert!(page.exchanges.len() <= 16);
        seen.extend(page.exchanges.iter().map(|e| e.path.clone()));
        cursor = page.next;
        pages += 1;
    }
    let expected: Vec<String> = (0..300)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("/orders/{i}"))
        .collect();
    assert_eq!(seen, expected);
    assert!(pages >= 300 / 16, "{pages} pages");
}

#[test]
fn the_newest_are_listed_whichever_shard_kept_them() {
    let store = Store::new(config(1 << 20), 2).unwrap();
    // Shard 0 fills its stage, which goes into the ring; shard 1's
    // exchanges, older and newer, wait in its stage.
    let early = store.add(1, exchange("/early", ""));
    store.finish(early, None, |_| ());
    for i in 0..400 {
        let open = store.add(0, exchange(&format!("/orders/{i}"), &"x".repeat(400)));
        store.finish(open, None, |_| ());
    }
    let late = store.add(1, exchange("/late", ""));
    store.finish(late, None, |_| ());
    let newest = store.list(&Filter {
        limit: Some(3),
        ..Filter::default()
    });
    let paths: Vec<&str> = newest.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/orders/398", "/orders/399", "/late"]);
    assert_eq!(store.list(&Filter::default()).len(), 402);
    assert_eq!(store.get(early.id).map(|e| e.path.clone()).as_deref(), Some("/early"));
}

#[test]
fn a_call_is_linked_to_the_request_its_caller_is_handling_through_another_shard() {
    let store = Store::new(config(1 << 20), 2).unwrap();
    let (gateway, orders): (Arc<str>, Arc<str>) = ("gateway".into(), "orders".into());
    let outer = store.enter(0, &gateway, EXTERNAL, None);
    assert_eq!(outer.parent, None, "the outside world handles no request");
    let inner = store.enter(1, &orders, "gateway", None);
    assert_eq!(inner.header.trace_id, outer.header.trace_id);
    assert_eq!(inner.parent, Some(outer.header.span_id));
    // Once the gateway's request is over, a call starts a trace of its own.
    let open = store.add(0, exchange("/", ""));
    store.finish(open, Some(("gateway", outer.header.span_id)), |_| ());
    let later = store.enter(1, &orders, "gateway", None);
    assert_ne!(later.header.trace_id, outer.header.trace_id);
    assert_eq!(later.parent, None);
}

#[test]
fn a_call_is_left_unlinked_when_its_caller_handles_several_requests() {
    let store = Store::new(config(1 << 20), 2).unwrap();
    let (gateway, orders): (Arc<str>, Arc<str>) = ("gateway".into(), "orders".into());
    let first = store.enter(0, &gateway, EXTERNAL, None);
    let second = store.enter(1, &gateway, EXTERNAL, None);
    let call = store.enter(0, &orders, "gateway", None);
    assert_eq!((call.parent, call.inferred), (None, false));
    assert!(![first.header.trace_id, second.header.trace_id].contains(&call.header.trace_id));
    // Said by the caller, it is exact however many are in flight; the
    // service sees this hop's own span as its parent.
    let told = TraceParent::new(second.header.trace_id, second.header.span_id);
    let call = store.enter(1, &orders, "gateway", Some(told));
    assert_eq!(call.header.trace_id, second.header.trace_id);
    assert_eq!((call.parent, call.inferred), (Some(second.header.span_id), false));
    assert_ne!(call.header.span_id, second.header.span_id);
}

#[test]
fn a_call_takes_its_callers_route_only_when_it_handles_one_request() {
    let store = Store::new(config(1 << 20), 2).unwrap();
    let (gateway, orders): (Arc<str>, Arc<str>) = ("gateway".into(), "orders".into());
    let (_, route) = store.enter_routed(0, &gateway, EXTERNAL, None, (Some("dev-a"), true));
    assert_eq!(route.as_deref(), Some("dev-a"));
    let (_, route) = store.enter_routed(1, &orders, "gateway", None, (None, true));
    assert_eq!(route.as_deref(), Some("dev-a"), "the gateway's one request's");
    let (_, route) = store.enter_routed(1, &orders, "gateway", None, (None, false));
    assert_eq!(route, None, "not inferred while no copy is routed to");
    let (_, route) = store.enter_routed(1, &orders, "gateway", None, (Some("dev-b"), true));
    assert_eq!(route.as_deref(), Some("dev-b"), "a call's own route is kept");
    // A second request in flight to the gateway, with no route: a call
    // could be for either, and takes neither.
    store.enter_routed(0, &gateway, EXTERNAL, None, (None, true));
    let (_, route) = store.enter_routed(1, &orders, "gateway", None, (None, true));
    assert_eq!(route, None);
}

#[test]
fn a_request_does_not_wait_for_a_search_of_the_ring() {
    let store = Arc::new(Store::new(config(1 << 20), 1).unwrap());
    // A search holds the ring for as long as a thousand exchanges end,
    // enough to fill the stage many times over.
    let search = lock(&store.core.ring);
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn({
        let store = Arc::clone(&store);
        move || {
            for i in 0..1000 {
                let open = store.add(0, exchange(&format!("/orders/{i}"), &"x".repeat(400)));
                store.finish(open, None, |_| ());
            }
            let _ = done.send(());
        }
    });
    let waited = finished.recv_timeout(std::time::Duration::from_secs(10));
    drop(search);
    assert!(waited.is_ok(), "requests waited for the search");
    assert_eq!(store.list(&Filter::default()).len(), 1000);
}

#[tokio::test]
async fn listeners_hear_of_changes_a_tick_at_a_time_and_when_they_lagged() {
    let store = Store::new(config(1 << 20), 1).unwrap();
    let mut events = store.subscribe();
    let next = async |events: &mut Subscription| {
        tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
            .await
            .expect("news in time")
    };
    let open = store.add(0, exchange("/one", ""));
    store.finish(open, None, |e| e.complete = true);
    let (began, ended) = (next(&mut events).await, next(&mut events).await);
    assert!(matches!(began, Ok(Event::Exchange(s)) if s.id == open.id && !s.complete));
    assert!(matches!(ended, Ok(Event::Exchange(s)) if s.id == open.id && s.complete));
}

#[test]
fn a_tick_tells_of_so_many_changes_then_that_listeners_lagged() {
    let mut changes = Changes::default();
    for i in 0..live::MAX_CHANGES {
        changes.note(&exchange(&format!("/orders/{i}"), ""));
    }
    assert!(!changes.lagged);
    changes.note(&exchange("/one-too-many", ""));
    assert!(changes.lagged);
    assert_eq!(changes.changed.len(), live::MAX_CHANGES);
}

#[test]
fn after_an_id_the_oldest_come_first_so_a_follower_misses_none() {
    let store = Store::new(config(1 << 20), 2).unwrap();
    for i in 0..600 {
        let open = store.add(i % 2, exchange(&format!("/orders/{i}"), ""));
        store.finish(open, None, |_| ());
    }
    let page = |after| {
        let listed = store.list(&Filter {
            after: Some(after),
            limit: Some(500),
            ..Filter::default()
        });
        listed.iter().map(|e| e.id).collect::<Vec<_>>()
    };
    assert_eq!(page(0), (1..=500).collect::<Vec<_>>());
    assert_eq!(page(500), (501..=600).collect::<Vec<_>>());
}
