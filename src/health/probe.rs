//! Probes: HTTP, TCP and Prometheus readings, each bounded by a timeout.
//!
//! A target that cannot be reached at all (HTTP connection refused,
//! Prometheus down, a query that returns nothing) reads as unknown; a
//! target that answers wrongly or too slowly reads as unhealthy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::history::History;
use super::trend::{self, Guard, Sample};
use super::{builtin_readings, slo_signal_name, Reading, Status};
use crate::model::health::{
    Anomaly, Direction, ForecastProbe, Healing, HttpProbe, PrometheusProbe, Seasonality, Signature,
    Slo, TcpProbe,
};
use crate::model::Resource;
use crate::vocab::LiveResource;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Recent Prometheus range queries, by (query, range, step in seconds):
/// when each was read, and its samples.
type Ranges = HashMap<(String, u64, u64), (Instant, Vec<Sample>)>;

/// Reads signals. One per pass (it holds a connection pool).
#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
    prometheus: Option<(String, Duration)>,
    alerts: std::sync::Arc<super::alerts::AlertBook>,
    host: std::sync::Arc<super::host::HostSignals>,
    /// Samples of the signals forecasts and anomaly conditions learn from.
    history: Arc<History>,
    /// The signatures, for the anomaly readings their conditions need.
    signatures: Arc<[Signature]>,
    /// Recent Prometheus range queries: (query, range, step) → when, samples.
    ranges: Arc<Mutex<Ranges>>,
}

impl Prober {
    pub fn new(healing: &Healing) -> Prober {
        Prober {
            client: reqwest::Client::builder()
                .user_agent(concat!("tend/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            prometheus: healing.prometheus.as_ref().map(|p| {
                (
                    p.url.trim_end_matches('/').to_string(),
                    p.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT),
                )
            }),
            alerts: std::sync::Arc::default(),
            host: std::sync::Arc::default(),
            history: Arc::default(),
            signatures: Arc::from(Vec::new()),
            ranges: Arc::default(),
        }
    }

    /// Derives the anomaly readings the conditions of `signatures` read.
    pub fn with_signatures(mut self, signatures: &[Signature]) -> Prober {
        self.signatures = Arc::from(signatures.to_vec());
        self
    }

    /// The signatures whose anomaly conditions it derives readings for.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The samples forecasts and baselines learn from, to load and save.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Reads host signals with the state directory (where a process's log
    /// is) and the host root (where relative paths resolve).
    pub fn with_host(mut self, state_dir: &std::path::Path, root: &std::path::Path) -> Prober {
        self.host = std::sync::Arc::new(super::host::HostSignals::new(
            state_dir,
            root,
            Arc::clone(&self.history),
        ));
        self
    }

    /// The host signals, to feed them what the journal knows.
    pub fn host(&self) -> &super::host::HostSignals {
        &self.host
    }

    /// Reads pushed alerts from `book` as `alert/<name>` signals.
    pub fn with_alerts(mut self, book: std::sync::Arc<super::alerts::AlertBook>) -> Prober {
        self.alerts = book;
        self
    }

    /// Every signal of a resource: built-in ones from the live inventory,
    /// then its probes and burn-rate SLOs, read concurrently.
    pub async fn read(&self, r: &Resource, live: Option<&LiveResource>) -> Vec<Reading> {
        let mut out = builtin_readings(r, live);
        out.extend(self.alerts.readings(&r.key));
        let Some(h) = &r.health else { return out };
        let probes = h
            .probes
            .iter()
            .filter(|p| p.forecast.is_none())
            .map(|p| async move {
                let (status, value, detail) = if let Some(http) = &p.http {
                    self.http(http).await
                } else if let Some(tcp) = &p.tcp {
                    tcp_probe(tcp).await
                } else if let Some(q) = &p.prometheus {
                    self.threshold(q).await
                } else if let Some(h) = &p.host {
                    self.host.read(r, &p.name, h, live).await
                } else {
                    (Status::Unknown, None, "probe has no type".into())
                };
                Reading {
                    signal: p.name.clone(),
                    status,
                    value,
                    detail,
                }
            });
        let burn = h
            .slos
            .iter()
            .filter(|s| s.error_ratio.is_some())
            .map(|s| self.burn_rate(s));
        let (probes, burn) = futures::future::join(
            futures::future::join_all(probes),
            futures::future::join_all(burn),
        )
        .await;
        out.extend(probes);
        out.extend(burn);
        let now = chrono::Utc::now();
        let wanted = super::history::wanted(r, &self.signatures);
        self.record(r, &wanted, &out, now);
        for p in &h.probes {
            if let Some(f) = &p.forecast {
                let (status, value, detail) = self.forecast(r, f, now).await;
                out.push(Reading {
                    signal: p.name.clone(),
                    status,
                    value,
                    detail,
                });
            }
        }
        // Forecasts can be learned from too (an anomaly condition on one).
        self.record(r, &wanted, &out, now);
        let anomalies = self.anomalies(r, &out, now).await;
        out.extend(anomalies);
        out
    }

    /// Adds the wanted series' values among `readings` to the history
    /// (a series already sampled at `now` is not sampled twice).
    fn record(
        &self,
        r: &Resource,
        wanted: &[super::history::Want],
        readings: &[Reading],
        now: chrono::DateTime<chrono::Utc>,
    ) {
        for w in wanted {
            if let Some(v) = readings
                .iter()
                .find(|rd| rd.signal == w.signal)
                .and_then(|rd| rd.value)
            {
                self.history.push(&r.key, &w.signal, w.keep, now, v);
            }
        }
    }

    /// A forecast probe: when its signal's fit crosses the threshold.
    async fn forecast(
        &self,
        r: &Resource,
        f: &ForecastProbe,
        now: chrono::DateTime<chrono::Utc>,
    ) -> (Status, Option<f64>, String) {
        let over = f.over();
        let series = match prometheus_query(r, &f.of) {
            Some(q) => {
                let step = (over / 120).max(Duration::from_secs(1));
                let fresh = step.min(Duration::from_secs(60));
                match self.range(q, over, step, fresh).await {
                    Ok(s) => s,
                    Err(e) => return (Status::Unknown, None, e),
                }
            }
            None => self.history.since(
                &r.key,
                &f.of,
                now - chrono::Duration::from_std(over).unwrap_or_default(),
            ),
        };
        let guard = Guard {
            min_span: over / 4,
            min_fit: f.min_fit.unwrap_or(0.8),
            floor: f.floor,
            rising: f.direction.map(|d| d != Direction::Down),
        };
        trend::reading_of(
            &trend::forecast(&series, f.threshold, &guard),
            &format!("{} reaches {}", f.of, trend::num(f.threshold)),
            &trend::num,
            f.below.0,
        )
    }

    /// The anomaly readings of the conditions of the signatures that
    /// select `r`: each signal's value against its learned band.
    async fn anomalies(
        &self,
        r: &Resource,
        readings: &[Reading],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Vec<Reading> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for sig in self.signatures.iter().filter(|s| s.selects(r)) {
            for c in sig.spec.all.iter().chain(&sig.spec.any) {
                let (Some(signal), Some(a)) = (&c.signal, &c.anomaly) else {
                    continue;
                };
                let name = a.signal_name(signal);
                if !seen.insert(name.clone()) {
                    continue;
                }
                let (status, value, detail) = self.anomaly(r, signal, a, readings, now).await;
                out.push(Reading {
                    signal: name,
                    status,
                    value,
                    detail,
                });
            }
        }
        out
    }

    async fn anomaly(
        &self,
        r: &Resource,
        signal: &str,
        a: &Anomaly,
        readings: &[Reading],
        now: chrono::DateTime<chrono::Utc>,
    ) -> (Status, Option<f64>, String) {
        let current = readings.iter().find(|rd| rd.signal == signal);
        let Some(value) = current.and_then(|rd| rd.value) else {
            let why = current.map_or_else(
                || format!("{} has no signal `{signal}`", r.key),
                |rd| format!("{signal} has no value: {}", rd.detail),
            );
            return (Status::Unknown, None, why);
        };
        let baseline = a.baseline();
        let history = match prometheus_query(r, signal) {
            Some(q) => {
                let step = (baseline / 2000).max(Duration::from_secs(15));
                match self.range(q, baseline, step, Duration::from_secs(60)).await {
                    Ok(s) => s,
                    Err(e) => return (Status::Unknown, None, e),
                }
            }
            None => self.history.since(
                &r.key,
                signal,
                now - chrono::Duration::from_std(baseline).unwrap_or_default(),
            ),
        };
        match trend::band(&history, now, a.seasonality, a.sensitivity, a.min_history()) {
            Err(why) => (Status::Unknown, Some(value), why),
            Ok(band) => {
                let over = format!(
                    "{}{}",
                    trend::words(baseline),
                    match a.seasonality {
                        Seasonality::None => String::new(),
                        s => format!(", {}", s.as_str()),
                    }
                );
                trend::band_reading(signal, value, &band, a.direction, &over)
            }
        }
    }

    /// A range query over the last `range` at `step`, reused for `fresh`.
    async fn range(
        &self,
        promql: &str,
        range: Duration,
        step: Duration,
        fresh: Duration,
    ) -> Result<Vec<Sample>, String> {
        let key = (promql.to_string(), range.as_secs(), step.as_millis() as u64);
        if let Some((at, s)) = self
            .ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if at.elapsed() < fresh {
                return Ok(s.clone());
            }
        }
        let Some((base, timeout)) = &self.prometheus else {
            return Err("no Prometheus server is configured".into());
        };
        let end = chrono::Utc::now();
        let start = end - chrono::Duration::from_std(range).unwrap_or_default();
        let secs = |t: chrono::DateTime<chrono::Utc>| {
            format!("{:.3}", t.timestamp_millis() as f64 / 1000.0)
        };
        let resp = self
            .client
            .get(format!("{base}/api/v1/query_range"))
            .query(&[
                ("query", promql.to_string()),
                ("start", secs(start)),
                ("end", secs(end)),
                ("step", format!("{:.3}", step.as_secs_f64())),
            ])
            .timeout(*timeout * 4)
            .send()
            .await
            .map_err(|e| format!("Prometheus unreachable: {}", root_cause(&e)))?;
        let body = answer(resp).await?;
        let samples: Vec<Sample> = body
            .pointer("/data/result/0/values")
            .and_then(Value::as_array)
            .map(|vals| {
                vals.iter()
                    .filter_map(|p| {
                        let t = p.get(0)?.as_f64()?;
                        let v = p.get(1)?.as_str()?.parse::<f64>().ok()?;
                        let at = chrono::DateTime::from_timestamp_millis((t * 1000.0) as i64)?;
                        v.is_finite().then_some((at, v))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut ranges = self.ranges.lock().unwrap_or_else(|e| e.into_inner());
        // Queries no longer asked (a probe removed) do not stay.
        ranges.retain(|_, (at, _)| at.elapsed() < Duration::from_secs(600));
        ranges.insert(key, (Instant::now(), samples.clone()));
        Ok(samples)
    }

    async fn http(&self, p: &HttpProbe) -> (Status, Option<f64>, String) {
        let timeout = p.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT);
        let started = Instant::now();
        let resp = match self.client.get(&p.url).timeout(timeout).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return (
                    Status::Unhealthy,
                    None,
                    format!("no response within {}", humantime::format_duration(timeout)),
                )
            }
            Err(e) => {
                return (
                    Status::Unknown,
                    None,
                    format!("target down: {}", root_cause(&e)),
                )
            }
        };
        let code = resp.status().as_u16();
        let body = match resp.text().await {
            Ok(b) => b,
            Err(e) => {
                return (
                    Status::Unhealthy,
                    None,
                    format!("failed to read the body: {e}"),
                )
            }
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let status_ok = match p.status {
            Some(want) => code == want,
            None => (200..300).contains(&code),
        };
        if !status_ok {
            return (Status::Unhealthy, Some(ms), format!("status {code}"));
        }
        if let Some(pattern) = &p.body_match {
            match regex::Regex::new(pattern) {
                Ok(re) if re.is_match(&body) => {}
                Ok(_) => {
                    return (
                        Status::Unhealthy,
                        Some(ms),
                        format!("status {code}, body does not match /{pattern}/"),
                    )
                }
                Err(e) => return (Status::Unknown, None, format!("invalid bodyMatch: {e}")),
            }
        }
        if let Some(max) = p.max_latency {
            if started.elapsed() > max.0 {
                return (
                    Status::Unhealthy,
                    Some(ms),
                    format!(
                        "status {code} after {ms:.0} ms (max {})",
                        humantime::format_duration(max.0)
                    ),
                );
            }
        }
        (
            Status::Healthy,
            Some(ms),
            format!("status {code} in {ms:.0} ms"),
        )
    }

    /// One instant query: `Ok(None)` when it returned no sample.
    async fn query(&self, promql: &str) -> Result<Option<f64>, String> {
        let Some((base, timeout)) = &self.prometheus else {
            return Err("no Prometheus server is configured".into());
        };
        let resp = self
            .client
            .get(format!("{base}/api/v1/query"))
            .query(&[("query", promql)])
            .timeout(*timeout)
            .send()
            .await
            .map_err(|e| format!("Prometheus unreachable: {}", root_cause(&e)))?;
        let body = answer(resp).await?;
        let data = body.get("data").cloned().unwrap_or(Value::Null);
        let sample = match data.get("resultType").and_then(Value::as_str) {
            Some("vector") => data.pointer("/result/0/value/1").cloned(),
            Some("scalar") => data.pointer("/result/1").cloned(),
            _ => None,
        };
        Ok(sample
            .and_then(|v| v.as_str().and_then(|s| s.parse::<f64>().ok()))
            .filter(|v| v.is_finite()))
    }

    async fn threshold(&self, p: &PrometheusProbe) -> (Status, Option<f64>, String) {
        match self.query(&p.query).await {
            Err(e) => (Status::Unknown, None, e),
            Ok(None) => (Status::Unknown, None, "the query returned no sample".into()),
            Ok(Some(v)) => {
                let bad = match (p.above, p.below) {
                    (Some(a), _) if v > a => Some(format!("{} > {a}", fmt(v))),
                    (_, Some(b)) if v < b => Some(format!("{} < {b}", fmt(v))),
                    _ => None,
                };
                match bad {
                    Some(why) => (Status::Unhealthy, Some(v), why),
                    None => (Status::Healthy, Some(v), format!("value {}", fmt(v))),
                }
            }
        }
    }

    /// Multi-window burn rate: unhealthy when, for any pair, the error
    /// budget burns faster than `factor` over both the long and the short
    /// window.
    async fn burn_rate(&self, slo: &Slo) -> Reading {
        let name = slo_signal_name(slo);
        let (Some(objective), Some(template)) = (slo.objective, &slo.error_ratio) else {
            return Reading {
                signal: name,
                status: Status::Unknown,
                value: None,
                detail: "not a burn-rate SLO".into(),
            };
        };
        let budget = (1.0 - objective).max(f64::EPSILON);
        let mut worst: Option<f64> = None;
        let mut breached = Vec::new();
        let mut unknown = Vec::new();
        for pair in &slo.burn_rates {
            let mut burns = Vec::with_capacity(2);
            for w in [pair.long.0, pair.short.0] {
                let window = prom_duration(w);
                match self.query(&template.replace("$window", &window)).await {
                    Ok(Some(ratio)) => burns.push(ratio / budget),
                    Ok(None) => unknown.push(format!("no sample over {window}")),
                    Err(e) => unknown.push(e),
                }
            }
            if let [long, short] = burns[..] {
                worst = Some(worst.map_or(short, |w: f64| w.max(short)));
                if long > pair.factor && short > pair.factor {
                    breached.push(format!(
                        "burn rate {} over {} and {} over {} (> {})",
                        fmt(long),
                        prom_duration(pair.long.0),
                        fmt(short),
                        prom_duration(pair.short.0),
                        pair.factor
                    ));
                }
            }
        }
        let (status, detail) = if !breached.is_empty() {
            (Status::Unhealthy, breached.join("; "))
        } else if !unknown.is_empty() {
            (Status::Unknown, unknown.join("; "))
        } else {
            (
                Status::Healthy,
                format!("burn rate {}", fmt(worst.unwrap_or(0.0))),
            )
        };
        Reading {
            signal: name,
            status,
            value: worst,
            detail,
        }
    }
}

/// A Prometheus API answer's body, or why the query failed.
async fn answer(resp: reqwest::Response) -> Result<Value, String> {
    let code = resp.status();
    let body: Value = resp
        .bytes()
        .await
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| format!("Prometheus answered {code} with an unreadable body: {e}"))?;
    if body.get("status").and_then(Value::as_str) != Some("success") {
        let why = body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown error");
        return Err(format!("query failed: {why}"));
    }
    Ok(body)
}

/// The query of `signal` when it is a Prometheus probe of `r`.
fn prometheus_query<'a>(r: &'a Resource, signal: &str) -> Option<&'a str> {
    r.health
        .iter()
        .flat_map(|h| h.probes.iter())
        .find(|p| p.name == signal)
        .and_then(|p| p.prometheus.as_ref())
        .map(|p| p.query.as_str())
}

async fn tcp_probe(p: &TcpProbe) -> (Status, Option<f64>, String) {
    let timeout = p.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT);
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&p.address)).await {
        Ok(Ok(_)) => {
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            (
                Status::Healthy,
                Some(ms),
                format!("connected in {ms:.0} ms"),
            )
        }
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => (
            Status::Unhealthy,
            None,
            format!("{}: connection refused", p.address),
        ),
        Ok(Err(e)) => (Status::Unknown, None, format!("{}: {e}", p.address)),
        Err(_) => (
            Status::Unknown,
            None,
            format!(
                "{}: no answer within {}",
                p.address,
                humantime::format_duration(timeout)
            ),
        ),
    }
}

/// A duration as PromQL writes it ("90s", "5m").
fn prom_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        format!("{}ms", d.as_millis().max(1))
    } else if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn fmt(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promql_durations() {
        assert_eq!(prom_duration(Duration::from_secs(300)), "5m");
        assert_eq!(prom_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(prom_duration(Duration::from_secs(90)), "90s");
        assert_eq!(prom_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[tokio::test]
    async fn a_refused_connection_is_unknown_for_http_and_unhealthy_for_tcp() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let prober = Prober::new(&Healing::default());
        let (s, _, _) = prober
            .http(&HttpProbe {
                url: format!("http://127.0.0.1:{port}/"),
                status: None,
                body_match: None,
                max_latency: None,
                timeout: None,
            })
            .await;
        assert_eq!(s, Status::Unknown);
        let (s, _, _) = tcp_probe(&TcpProbe {
            address: format!("127.0.0.1:{port}"),
            timeout: None,
        })
        .await;
        assert_eq!(s, Status::Unhealthy);
        let (s, _, d) = prober
            .threshold(&PrometheusProbe {
                query: "up".into(),
                above: Some(1.0),
                below: None,
            })
            .await;
        assert_eq!(s, Status::Unknown, "{d}");
    }
}
