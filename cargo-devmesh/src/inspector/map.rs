//! The call map: who calls whom among the exchanges kept, for each pair
//! how often, how often it failed, and its mean and p99 latency.

use serde::Serialize;

use super::Store;

/// Every pair of caller and service that the kept exchanges link.
#[derive(Debug, Clone, Serialize)]
pub struct CallMap {
    pub edges: Vec<Edge>,
}

/// Calls from one caller to one service.
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub count: usize,
    /// Failed calls: an error, a 5xx, or a gRPC status but OK.
    pub errors: u64,
    pub mean_ms: f64,
    pub p99_ms: f64,
}

impl CallMap {
    /// The map of what `store` holds now, pairs in name order.
    pub fn of(store: &Store) -> CallMap {
        struct Calls {
            from: String,
            to: String,
            times: Vec<f64>,
            errors: u64,
        }
        // Pairs are few: found by comparing names, and named once.
        let mut pairs: Vec<Calls> = Vec::new();
        store.each_call(|call| {
            let pair = match pairs.iter().position(|p| p.from == call.caller && p.to == call.service) {
                Some(found) => &mut pairs[found],
                None => {
                    pairs.push(Calls {
                        from: call.caller.to_owned(),
                        to: call.service.to_owned(),
                        times: Vec::new(),
                        errors: 0,
                    });
                    pairs.last_mut().expect("just pushed")
                }
            };
            pair.times.push(call.total_ms.or(call.service_ms).unwrap_or(0.0));
            if call.failed() {
                pair.errors += 1;
            }
        });
        pairs.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
        let edges = pairs
            .into_iter()
            .map(
                |Calls {
                     from,
                     to,
                     mut times,
                     errors,
                 }| {
                    times.sort_by(f64::total_cmp);
                    let count = times.len();
                    Edge {
                        from,
                        to,
                        count,
                        errors,
                        mean_ms: times.iter().sum::<f64>() / count as f64,
                        p99_ms: times[((count as f64 * 0.99).ceil() as usize).clamp(1, count) - 1],
                    }
                },
            )
            .collect();
        CallMap { edges }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspector::{Exchange, Kind};

    #[test]
    fn the_map_counts_each_pair_with_its_failures_and_latencies() {
        let store = Store::new(devmesh::config::InspectorConfig::default(), 2).unwrap();
        let call = |shard: usize, caller: &str, service: &str, status: u16, ms: f64| {
            let open = store.add(shard, Exchange::begun(service.into(), caller.into(), Kind::Http));
            store.finish(open, None, |e| {
                e.status = Some(status);
                e.total_ms = Some(ms);
            });
        };
        for ms in 1..=100 {
            call(ms as usize % 2, "gateway", "orders", 200, f64::from(ms));
        }
        call(0, "orders", "payments", 503, 7.0);
        // One still in flight counts too.
        store.add(1, Exchange::begun("payments".into(), "orders".into(), Kind::Http));
        let edges = serde_json::to_value(CallMap::of(&store)).unwrap()["edges"].clone();
        assert_eq!(
            edges,
            serde_json::json!([
                { "from": "gateway", "to": "orders", "count": 100, "errors": 0, "mean_ms": 50.5, "p99_ms": 99.0 },
                { "from": "orders", "to": "payments", "count": 2, "errors": 1, "mean_ms": 3.5, "p99_ms": 7.0 },
            ])
        );
    }
}
