//! `GET /metrics` (issue 13): Prometheus figures in the OpenMetrics text format, written by
//! the `prometheus-client` crate. hvd's own series (API requests by route template, method and
//! status, their latency, operations and events by kind) are counted as they happen; the rest
//! (VMs by state, networks, running operations, and per running VM its CPU time, memory, disk
//! and NIC counters from `engine/src/stats.rs`) is read at each scrape. Labels only take values
//! hvd chose (route templates, VM, disk and NIC names), never a request's raw path.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use engine::Engine;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The media type of the OpenMetrics text format (Prometheus asks for it first).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    kind: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabels {
    vm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabels {
    vm: String,
    disk: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NicLabels {
    vm: String,
    nic: String,
}

type Latency = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// hvd's own counters, shared by the request middleware, the event follower and scrapes.
pub struct Metrics {
    engine: Engine,
    requests: Family<RequestLabels, Counter>,
    latency: Latency,
    events: Family<KindLabels, Counter>,
    operations_started: Family<KindLabels, Counter>,
    operations_finished: Family<OpLabels, Counter>,
}

impl Metrics {
    /// Counts `engine`'s events from now on (needs a Tokio runtime).
    pub fn new(engine: Engine) -> Arc<Metrics> {
        let m = Arc::new(Metrics {
            engine: engine.clone(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            events: Family::default(),
            operations_started: Family::default(),
            operations_finished: Family::default(),
        });
        let counting = m.clone();
        let mut follower = engine.events().follow(None);
        tokio::spawn(async move {
            while let Some(ev) = follower.next().await {
                counting.count_event(&ev);
            }
        });
        m
    }

    fn count_event(&self, ev: &api::Event) {
        self.events
            .get_or_create(&KindLabels {
                kind: ev.kind.name().to_string(),
            })
            .inc();
        if let api::EventKind::Operation { operation: o } = &ev.kind {
            // Progress events repeat `running`; the start is the one without progress.
            if o.status == api::OperationStatus::Running {
                if o.progress_percent.is_none() {
                    self.operations_started
                        .get_or_create(&KindLabels {
                            kind: o.kind.clone(),
                        })
                        .inc();
                }
            } else {
                self.operations_finished
                    .get_or_create(&OpLabels {
                        kind: o.kind.clone(),
                        status: o.status.to_string(),
                    })
                    .inc();
            }
        }
    }

    /// One scrape: the counted series plus what is read now.
    pub async fn render(&self) -> String {
        let e = &self.engine;
        let mut reg = Registry::with_prefix("hv");
        reg.register(
            "api_requests",
            "API requests by route template, method and status",
            self.requests.clone(),
        );
        reg.register(
            "api_request_duration_seconds",
            "Time to answer API requests (to the response head), by route template and method",
            self.latency.clone(),
        );
        reg.register(
            "events",
            "Events in hvd's event log, by kind",
            self.events.clone(),
        );
        reg.register(
            "operations_started",
            "Operations started, by kind",
            self.operations_started.clone(),
        );
        reg.register(
            "operations_finished",
            "Operations finished, by kind and outcome",
            self.operations_finished.clone(),
        );

        let vms_by_state = Family::<StateLabels, Gauge>::default();
        let list = e.list();
        for s in ["running", "paused", "shutoff", "crashed"] {
            let _ = vms_by_state.get_or_create(&StateLabels { state: s.into() });
        }
        for vm in &list {
            vms_by_state
                .get_or_create(&StateLabels {
                    state: vm.state.to_string(),
                })
                .inc();
        }
        reg.register("vms", "Defined VMs by state", vms_by_state);

        let nets = Family::<StateLabels, Gauge>::default();
        for s in ["active", "inactive"] {
            let _ = nets.get_or_create(&StateLabels { state: s.into() });
        }
        for n in e.net_list().await {
            nets.get_or_create(&StateLabels {
                state: if n.active { "active" } else { "inactive" }.into(),
            })
            .inc();
        }
        reg.register("networks", "Defined networks by state", nets);

        let running_ops = Family::<KindLabels, Gauge>::default();
        for o in e.operations().list() {
            if o.status == api::OperationStatus::Running {
                running_ops
                    .get_or_create(&KindLabels { kind: o.kind })
                    .inc();
            }
        }
        reg.register(
            "operations_running",
            "Operations running now, by kind",
            running_ops,
        );

        let cpu = Family::<VmLabels, Counter<f64, AtomicU64>>::default();
        let rss = Family::<VmLabels, Gauge>::default();
        let mem = Family::<VmLabels, Gauge>::default();
        let rd_bytes = Family::<DiskLabels, Counter>::default();
        let wr_bytes = Family::<DiskLabels, Counter>::default();
        let rd_ops = Family::<DiskLabels, Counter>::default();
        let wr_ops = Family::<DiskLabels, Counter>::default();
        let rx_bytes = Family::<NicLabels, Counter>::default();
        let tx_bytes = Family::<NicLabels, Counter>::default();
        let rx_packets = Family::<NicLabels, Counter>::default();
        let tx_packets = Family::<NicLabels, Counter>::default();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for s in e.all_stats(|_| true).await {
            let vm = VmLabels { vm: s.vm.clone() };
            cpu.get_or_create(&vm).inc_by(s.cpu_seconds);
            rss.get_or_create(&vm).set(gauge(s.memory_rss_bytes));
            mem.get_or_create(&vm).set(gauge(s.memory_configured_bytes));
            for d in &s.disks {
                let l = DiskLabels {
                    vm: s.vm.clone(),
                    disk: d.disk.clone(),
                };
                rd_bytes.get_or_create(&l).inc_by(d.rd_bytes);
                wr_bytes.get_or_create(&l).inc_by(d.wr_bytes);
                rd_ops.get_or_create(&l).inc_by(d.rd_ops);
                wr_ops.get_or_create(&l).inc_by(d.wr_ops);
            }
            for n in &s.nics {
                let l = NicLabels {
                    vm: s.vm.clone(),
                    nic: n.nic.clone(),
                };
                rx_bytes.get_or_create(&l).inc_by(n.rx_bytes);
                tx_bytes.get_or_create(&l).inc_by(n.tx_bytes);
                rx_packets.get_or_create(&l).inc_by(n.rx_packets);
                tx_packets.get_or_create(&l).inc_by(n.tx_packets);
            }
        }
        reg.register(
            "vm_cpu_seconds",
            "CPU time QEMU used (user + system) since it started",
            cpu,
        );
        reg.register("vm_memory_rss_bytes", "QEMU's resident memory", rss);
        reg.register(
            "vm_memory_configured_bytes",
            "The guest's configured memory",
            mem,
        );
        reg.register(
            "vm_disk_read_bytes",
            "Bytes the guest read from a disk",
            rd_bytes,
        );
        reg.register(
            "vm_disk_write_bytes",
            "Bytes the guest wrote to a disk",
            wr_bytes,
        );
        reg.register(
            "vm_disk_read_ops",
            "Read requests of the guest on a disk",
            rd_ops,
        );
        reg.register(
            "vm_disk_write_ops",
            "Write requests of the guest on a disk",
            wr_ops,
        );
        reg.register(
            "vm_nic_rx_bytes",
            "Bytes the guest received on a NIC",
            rx_bytes,
        );
        reg.register("vm_nic_tx_bytes", "Bytes the guest sent on a NIC", tx_bytes);
        reg.register(
            "vm_nic_rx_packets",
            "Packets the guest received on a NIC",
            rx_packets,
        );
        reg.register(
            "vm_nic_tx_packets",
            "Packets the guest sent on a NIC",
            tx_packets,
        );

        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &reg) {
            tracing::error!(error = %err, "cannot encode the metrics");
        }
        out
    }
}

/// The `/metrics` route.
pub fn router(m: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(scrape)).with_state(m)
}

async fn scrape(State(m): State<Arc<Metrics>>) -> Response {
    let body = m.render().await;
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    resp
}

/// Counts every request by the route template it matched (`unmatched` otherwise), method and
/// status, and its time to the response head.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
    .to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    m.requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.clone(),
            status: resp.status().as_u16().to_string(),
        })
        .inc();
    m.latency
        .get_or_create(&RouteLabels { route, method })
        .observe(start.elapsed().as_secs_f64());
    resp
}

/// An address block of `--metrics-allow`: `ADDR` or `ADDR/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not ADDR or ADDR/PREFIX (say 127.0.0.1, 10.0.0.0/8, ::1)");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// 127.0.0.0/8 and ::1.
    pub fn loopback() -> Vec<Cidr> {
        vec![
            Cidr {
                addr: std::net::Ipv4Addr::new(127, 0, 0, 0).into(),
                prefix: 8,
            },
            Cidr {
                addr: std::net::Ipv6Addr::LOCALHOST.into(),
                prefix: 128,
            },
        ]
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// `--metrics-listen`: `GET /metrics` only, plain HTTP, to the allowed peers only.
pub async fn serve_plain(l: tokio::net::TcpListener, m: Arc<Metrics>, allow: Vec<Cidr>) {
    let allow = Arc::new(allow);
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(m)
        .layer(axum::middleware::from_fn(
            move |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
                  req: Request,
                  next: Next| {
                let allow = allow.clone();
                async move {
                    if allow.iter().any(|c| c.contains(peer.ip())) {
                        next.run(req).await
                    } else {
                        (
                            StatusCode::FORBIDDEN,
                            format!(
                                "{} may not scrape this listener; add it to hvd --metrics-allow\n",
                                peer.ip()
                            ),
                        )
                            .into_response()
                    }
                }
            },
        ));
    let svc = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(l, svc).await {
        tracing::error!(error = %e, "the --metrics-listen listener stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_match_by_prefix() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        assert!(Cidr::loopback()
            .iter()
            .any(|c| c.contains("127.0.0.5".parse().unwrap())));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }
}
