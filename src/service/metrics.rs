//! The service's counters in the Prometheus text exposition format (`GET /metrics`): requests by
//! route and status, request latency and batch-size histograms, queue depths, cancelled jobs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Upper bounds (seconds) of the latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Upper bounds of the batch-size histogram's buckets.
const BATCH_BUCKETS: [usize; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

#[derive(Default)]
struct Histogram {
    /// Count per bucket (same order as the bounds), not cumulative.
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], value: f64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; bounds.len()];
        }
        if let Some(i) = bounds.iter().position(|&b| value <= b) {
            self.buckets[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, label: &str, bounds: &[f64]) {
        let mut cumulative = 0;
        for (bound, n) in bounds.iter().zip(&self.buckets) {
            cumulative += n;
            out.push_str(&format!("{name}_bucket{{{label},le=\"{bound}\"}} {cumulative}\n"));
        }
        out.push_str(&format!("{name}_bucket{{{label},le=\"+Inf\"}} {}\n", self.count));
        out.push_str(&format!("{name}_sum{{{label}}} {}\n{name}_count{{{label}}} {}\n", self.sum, self.count));
    }
}

#[derive(Default)]
struct Counters {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    batch_size: BTreeMap<&'static str, Histogram>,
    /// Exact batch sizes, for `rectok bench serve`'s histogram.
    batch_exact: BTreeMap<&'static str, BTreeMap<usize, u64>>,
    cancelled: BTreeMap<&'static str, u64>,
}

/// Everything `GET /metrics` reports; shared by the handlers and the batch workers.
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    queues: Mutex<BTreeMap<&'static str, std::sync::Arc<AtomicUsize>>>,
}

impl Metrics {
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One answered request on `route` (the route's pattern, not the raw path) with `status`,
    /// after `seconds`.
    pub fn record_request(&self, route: &str, status: u16, seconds: f64) {
        let mut c = self.counters();
        *c.requests.entry((route.to_string(), status)).or_default() += 1;
        c.latency.entry(route.to_string()).or_default().observe(&LATENCY_BUCKETS, seconds);
    }

    /// One batch of `size` jobs run by the `model` worker.
    pub fn record_batch(&self, model: &'static str, size: usize) {
        let bounds: Vec<f64> = BATCH_BUCKETS.iter().map(|&b| b as f64).collect();
        let mut c = self.counters();
        c.batch_size.entry(model).or_default().observe(&bounds, size as f64);
        *c.batch_exact.entry(model).or_default().entry(size).or_default() += 1;
    }

    /// Jobs of `model` dropped before running because their client went away or timed out.
    pub fn record_cancelled(&self, model: &'static str, n: usize) {
        *self.counters().cancelled.entry(model).or_default() += n as u64;
    }

    /// Registers the depth counter of `model`'s queue (and its cancelled count, from 0).
    pub fn register_queue(&self, model: &'static str, depth: std::sync::Arc<AtomicUsize>) {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).insert(model, depth);
        self.counters().cancelled.entry(model).or_default();
    }

    /// How many batches of each size `model` ran: `(size, batches)`, ascending.
    pub fn batch_histogram(&self, model: &str) -> Vec<(usize, u64)> {
        self.counters().batch_exact.get(model).map(|h| h.iter().map(|(&s, &n)| (s, n)).collect()).unwrap_or_default()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let c = self.counters();
        let mut out = String::new();
        out.push_str("# HELP rectok_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE rectok_requests_total counter\n");
        for ((route, status), n) in &c.requests {
            out.push_str(&format!("rectok_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"));
        }
        out.push_str("# HELP rectok_request_duration_seconds Time from a request's arrival to its answer.\n");
        out.push_str("# TYPE rectok_request_duration_seconds histogram\n");
        for (route, h) in &c.latency {
            h.write(&mut out, "rectok_request_duration_seconds", &format!("route=\"{route}\""), &LATENCY_BUCKETS);
        }
        out.push_str("# HELP rectok_batch_size Jobs run together in one batch, by model.\n");
        out.push_str("# TYPE rectok_batch_size histogram\n");
        let bounds: Vec<f64> = BATCH_BUCKETS.iter().map(|&b| b as f64).collect();
        for (model, h) in &c.batch_size {
            h.write(&mut out, "rectok_batch_size", &format!("model=\"{model}\""), &bounds);
        }
        out.push_str("# HELP rectok_queue_depth Jobs waiting in a model's queue.\n");
        out.push_str("# TYPE rectok_queue_depth gauge\n");
        for (model, depth) in self.queues.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            out.push_str(&format!("rectok_queue_depth{{model=\"{model}\"}} {}\n", depth.load(Ordering::Relaxed)));
        }
        out.push_str("# HELP rectok_cancelled_total Jobs dropped unrun because their client left or timed out.\n");
        out.push_str("# TYPE rectok_cancelled_total counter\n");
        for (model, n) in &c.cancelled {
            out.push_str(&format!("rectok_cancelled_total{{model=\"{model}\"}} {n}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_cumulative_buckets_and_counts() {
        let m = Metrics::default();
        m.record_request("/v1/encode", 200, 0.003);
        m.record_request("/v1/encode", 200, 0.3);
        m.record_request("/v1/encode", 400, 0.0001);
        m.record_batch("tokenizer", 3);
        m.record_batch("tokenizer", 1);
        m.record_cancelled("generator", 2);
        let depth = std::sync::Arc::new(AtomicUsize::new(5));
        m.register_queue("tokenizer", depth);
        let text = m.render();
        assert!(text.contains("rectok_requests_total{route=\"/v1/encode\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("rectok_requests_total{route=\"/v1/encode\",status=\"400\"} 1\n"));
        // 0.0001 and 0.003 are at most 0.005; 0.3 only from 0.5 up.
        assert!(text.contains("rectok_request_duration_seconds_bucket{route=\"/v1/encode\",le=\"0.005\"} 2\n"));
        assert!(text.contains("rectok_request_duration_seconds_bucket{route=\"/v1/encode\",le=\"0.5\"} 3\n"));
        assert!(text.contains("rectok_request_duration_seconds_count{route=\"/v1/encode\"} 3\n"));
        assert!(text.contains("rectok_batch_size_bucket{model=\"tokenizer\",le=\"2\"} 1\n"));
        assert!(text.contains("rectok_batch_size_bucket{model=\"tokenizer\",le=\"4\"} 2\n"));
        assert!(text.contains("rectok_batch_size_sum{model=\"tokenizer\"} 4\n"));
        assert!(text.contains("rectok_queue_depth{model=\"tokenizer\"} 5\n"));
        assert!(text.contains("rectok_cancelled_total{model=\"generator\"} 2\n"));
        assert!(text.contains("rectok_cancelled_total{model=\"tokenizer\"} 0\n"), "a registered queue starts at 0");
        assert_eq!(m.batch_histogram("tokenizer"), vec![(1, 1), (3, 1)]);
    }
}
