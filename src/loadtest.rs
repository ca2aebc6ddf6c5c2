//! `stategate loadtest`: drives a deployment (proxy and authentication
//! included) with Terraform's own cycle, so operators measure what their
//! users will see. Client `i` repeats LOCK, GET, POST (`?ID=`, the serial
//! one above what it read), UNLOCK on its own state `<URL>/c<i>`, or all
//! clients on `<URL>` itself with `--shared-key`, where 423 answers are
//! expected and counted; with `--new-states`, client `i` POSTs new states
//! to fresh keys `<URL>/c<i>-<n>` and nothing else, as a migration or a
//! fleet's first applies do. It prints a progress line, then cycles per second,
//! latency percentiles per verb and every unexpected answer, and fails when
//! there was one. A GET body is read only up to the size of the states
//! written plus [`GET_SLACK_BYTES`]: a longer one stops the run, so a
//! server (or a proxy) that streams without end cannot fill the memory of
//! the machine testing it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use hdrhistogram::Histogram;
use md5::{Digest, Md5};
use reqwest::{Method, StatusCode};

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The state URL clients work under.
    pub url: String,
    pub clients: usize,
    /// Size of every state written.
    pub state_bytes: usize,
    pub duration: Duration,
    /// All clients on one state, contending for its lock.
    pub shared_key: bool,
    /// Each request a new state at a fresh key, without a lock: a cycle
    /// is one POST.
    pub new_states: bool,
    /// HTTP basic credentials, as Terraform sends them.
    pub user: Option<String>,
    pub password: Option<String>,
}

/// The verbs of one cycle, in order.
const VERBS: [&str; 4] = ["LOCK", "GET", "POST", "UNLOCK"];

/// How much longer than the states it writes a GET body may be: room for
/// a state written at that key before, by a run with other settings.
pub const GET_SLACK_BYTES: usize = 1024 * 1024;

/// What the run measured.
pub struct Report {
    pub elapsed: Duration,
    /// Complete cycles (new states, with [`Plan::new_states`]).
    pub cycles: u64,
    /// Whether the cycles were new states.
    pub new_states: bool,
    /// LOCK answers 423 (the lock was held by another client).
    pub conflicts: u64,
    /// Latency per verb, in microseconds.
    pub latency: BTreeMap<&'static str, Histogram<u64>>,
    /// Unexpected answers: description, count.
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    /// Whether every answer was one Terraform expects.
    pub fn clean(&self) -> bool {
        self.errors.is_empty()
    }

    /// The summary table.
    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(f64::EPSILON);
        let mut out = match self.new_states {
            true => format!(
                "{} new states in {:.1}s: {:.1} new states/s\n",
                self.cycles,
                secs,
                self.cycles as f64 / secs
            ),
            false => format!(
                "{} cycles in {:.1}s: {:.1} cycles/s; {} lock conflicts (423)\n",
                self.cycles,
                secs,
                self.cycles as f64 / secs,
                self.conflicts
            ),
        };
        out.push_str(&format!(
            "{:<7} {:>9} {:>10} {:>10} {:>10} {:>10}\n",
            "verb", "count", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        ));
        for verb in VERBS {
            let Some(h) = self.latency.get(verb) else {
                continue;
            };
            let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            out.push_str(&format!(
                "{verb:<7} {:>9} {:>10.2} {:>10.2} {:>10.2} {:>10.2}\n",
                h.len(),
                ms(0.5),
                ms(0.99),
                ms(0.999),
                h.max() as f64 / 1000.0
            ));
        }
        if self.errors.is_empty() {
            out.push_str("no unexpected answers\n");
        } else {
            for (what, n) in &self.errors {
                out.push_str(&format!("unexpected: {what} ({n} times)\n"));
            }
        }
        out
    }
}

/// Shared by the clients.
struct Tally {
    cycles: AtomicU64,
    conflicts: AtomicU64,
    latency: Mutex<BTreeMap<&'static str, Histogram<u64>>>,
    errors: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
}

impl Tally {
    fn record(&self, verb: &'static str, took: Duration) {
        let micros = took.as_micros().min(u64::MAX as u128) as u64;
        let mut latency = self.latency.lock().expect("latency");
        let h = latency
            .entry(verb)
            .or_insert_with(|| Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram"));
        h.saturating_record(micros.max(1));
    }

    fn error(&self, what: String) {
        *self.errors.lock().expect("errors").entry(what).or_default() += 1;
    }
}

/// A Terraform state of about `size` bytes.
fn state_body(lineage: &str, serial: u64, size: usize) -> Vec<u8> {
    let head = format!(
        "{{\"version\":4,\"terraform_version\":\"1.11.4\",\"serial\":{serial},\"lineage\":\"{lineage}\",\
         \"outputs\":{{\"pad\":{{\"type\":\"string\",\"value\":\""
    );
    let tail = "\"}},\"resources\":[],\"check_results\":null}\n";
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut body = Vec::with_capacity(head.len() + pad + tail.len());
    body.extend_from_slice(head.as_bytes());
    body.resize(head.len() + pad, b'x');
    body.extend_from_slice(tail.as_bytes());
    body
}

/// The serial of a state body, where it has one.
fn serial_of(body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Head {
        serial: Option<u64>,
    }
    serde_json::from_slice::<Head>(body).ok()?.serial
}

/// Runs the plan; `progress` is called about once a second with the
/// cycles so far and the time elapsed.
pub async fn run(plan: Plan, progress: impl Fn(u64, Duration)) -> Result<Report, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.clients)
        .timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let tally = Arc::new(Tally {
        cycles: AtomicU64::new(0),
        conflicts: AtomicU64::new(0),
        latency: Mutex::new(BTreeMap::new()),
        errors: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
    });
    let base = plan.url.trim_end_matches('/').to_string();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..plan.clients {
        let url = if plan.shared_key {
            base.clone()
        } else {
            format!("{base}/c{i}")
        };
        let client = client.clone();
        let tally = Arc::clone(&tally);
        let plan = plan.clone();
        tasks.push(tokio::spawn(async move {
            match plan.new_states {
                true => new_states_loop(i, &url, &client, &plan, &tally).await,
                false => client_loop(i, &url, &client, &plan, &tally).await,
            }
        }));
    }
    let deadline = started + plan.duration;
    while Instant::now() < deadline && !tally.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
        progress(tally.cycles.load(Ordering::Relaxed), started.elapsed());
    }
    tally.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.map_err(|e| format!("client failed: {e}"))?;
    }
    let elapsed = started.elapsed();
    let tally = Arc::try_unwrap(tally).map_err(|_| "clients still running".to_string())?;
    Ok(Report {
        elapsed,
        new_states: plan.new_states,
        cycles: tally.cycles.into_inner(),
        conflicts: tally.conflicts.into_inner(),
        latency: tally.latency.into_inner().expect("latency"),
        errors: tally.errors.into_inner().expect("errors"),
    })
}

async fn client_loop(i: usize, url: &str, client: &reqwest::Client, plan: &Plan, tally: &Tally) {
    let lineage = if plan.shared_key {
        "stategate-loadtest".to_string()
    } else {
        format!("stategate-loadtest-c{i}")
    };
    let lock_method = Method::from_bytes(b"LOCK").expect("method");
    let unlock_method = Method::from_bytes(b"UNLOCK").expect("method");
    let mut n = 0u64;
    while !tally.stop.load(Ordering::Relaxed) {
        n += 1;
        let id = format!("loadtest-{i}-{n}");
        let info = serde_json::json!({
            "ID": id, "Operation": "OperationTypeApply", "Info": "",
            "Who": format!("loadtest@c{i}"), "Version": "1.11.4",
            "Created": "2026-01-01T00:00:00Z", "Path": "",
        })
        .to_string();
        let send = |method: Method, target: String, body: Vec<u8>, md5: Option<String>| {
            let mut request = client.request(method, target).body(body);
            if let Some(user) = &plan.user {
                request = request.basic_auth(user, plan.password.as_deref());
            }
            if let Some(md5) = md5 {
                request = request
                    .header("Content-Type", "application/json")
                    .header("Content-MD5", md5);
            }
            request.send()
        };
        // LOCK
        let t = Instant::now();
        let status = match send(
            lock_method.clone(),
            url.to_string(),
            info.clone().into_bytes(),
            None,
        )
        .await
        {
            Ok(r) => r.status(),
            Err(e) => {
                tally.error(format!("LOCK: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tally.record("LOCK", t.elapsed());
        if status == StatusCode::LOCKED && plan.shared_key {
            tally.conflicts.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        if status != StatusCode::OK {
            tally.error(format!("LOCK answered {status}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        // GET
        let t = Instant::now();
        let limit = plan.state_bytes.saturating_add(GET_SLACK_BYTES);
        let serial = match send(Method::GET, url.to_string(), Vec::new(), None).await {
            Ok(r) if r.status() == StatusCode::OK => match read_bounded(r, limit).await {
                Ok(b) => serial_of(&b).unwrap_or(0),
                Err(BodyError::TooLong) => {
                    tally.error(format!(
                        "GET answered a body of more than {limit} bytes, though the states written are {} \
                         bytes; the run stopped (is the URL a stategate state only this test writes?)",
                        plan.state_bytes
                    ));
                    tally.stop.store(true, Ordering::Relaxed);
                    break;
                }
                Err(BodyError::Failed(e)) => {
                    tally.error(format!("GET body: {e}"));
                    0
                }
            },
            Ok(r) if r.status() == StatusCode::NOT_FOUND => 0,
            Ok(r) => {
                tally.error(format!("GET answered {}", r.status()));
                0
            }
            Err(e) => {
                tally.error(format!("GET: {e}"));
                0
            }
        };
        tally.record("GET", t.elapsed());
        // POST
        let body = state_body(&lineage, serial + 1, plan.state_bytes);
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
        let t = Instant::now();
        match send(Method::POST, format!("{url}?ID={id}"), body, Some(md5)).await {
            Ok(r) if r.status() == StatusCode::OK => {}
            Ok(r) => tally.error(format!("POST answered {}", r.status())),
            Err(e) => tally.error(format!("POST: {e}")),
        }
        tally.record("POST", t.elapsed());
        // UNLOCK
        let t = Instant::now();
        match send(
            unlock_method.clone(),
            url.to_string(),
            info.into_bytes(),
            None,
        )
        .await
        {
            Ok(r) if r.status() == StatusCode::OK => {
                tally.cycles.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => tally.error(format!("UNLOCK answered {}", r.status())),
            Err(e) => tally.error(format!("UNLOCK: {e}")),
        }
        tally.record("UNLOCK", t.elapsed());
    }
}

/// Client `i` of a `--new-states` run: one POST after another, each a
/// new state at a fresh key below `url`, the same body every time (its
/// `Content-MD5` taken once), so the client costs the server's machine
/// as little as it can.
async fn new_states_loop(
    i: usize,
    url: &str,
    client: &reqwest::Client,
    plan: &Plan,
    tally: &Tally,
) {
    let body = bytes::Bytes::from(state_body(
        &format!("stategate-loadtest-c{i}"),
        1,
        plan.state_bytes,
    ));
    let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&body));
    let mut n = 0u64;
    while !tally.stop.load(Ordering::Relaxed) {
        n += 1;
        let mut request = client
            .post(format!("{url}-{n}"))
            .header("Content-Type", "application/json")
            .header("Content-MD5", &md5)
            .body(body.clone());
        if let Some(user) = &plan.user {
            request = request.basic_auth(user, plan.password.as_deref());
        }
        let t = Instant::now();
        match request.send().await {
            Ok(r) if r.status() == StatusCode::OK => {
                tally.cycles.fetch_add(1, Ordering::Relaxed);
            }
            Ok(r) => tally.error(format!("POST answered {}", r.status())),
            Err(e) => {
                tally.error(format!("POST: {e}"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        tally.record("POST", t.elapsed());
    }
}

/// Why a GET body was not read.
enum BodyError {
    /// It went on past the limit.
    TooLong,
    /// The transfer failed.
    Failed(reqwest::Error),
}

/// Reads a body of at most `limit` bytes, a chunk at a time, and stops as
/// soon as it is known to be longer.
async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLong);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Failed)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLong);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_bodies_have_the_size_asked_and_read_back_their_serial() {
        let body = state_body("l", 7, 100 * 1024);
        assert_eq!(body.len(), 100 * 1024);
        assert_eq!(serial_of(&body), Some(7));
        let small = state_body("l", 1, 10);
        assert_eq!(serial_of(&small), Some(1));
    }
}
