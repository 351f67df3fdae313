//! The embedded proxy on its own, in front of in-process demo apps: the weighted split,
//! hop-by-hop and forwarding headers, streaming in both directions, draining, the
//! answer when no target is up, per-colour metrics, and the `/metrics` text.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bluegreen::flow::{Color, Weights};
use bluegreen::local::demo_app::{self, DemoApp};
use bluegreen::local::http::serve;
use bluegreen::local::proxy::{Route, forward, strip_hop_by_hop, upstream_client};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::header::{HeaderMap, HeaderValue};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::watch;

struct Bench {
    proxy: SocketAddr,
    route: Arc<Route>,
    _stop: watch::Sender<bool>,
}

async fn app(
    version: &str,
    color: &str,
    latency: Duration,
    stop: watch::Receiver<bool>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = DemoApp {
        version: version.into(),
        color: color.into(),
        error_rate: 0.0,
        latency,
    };
    tokio::spawn(demo_app::run(app, listener, stop));
    addr
}

/// Blue v1 and green v2 behind a proxy with `weights`.
async fn bench(weights: Weights, sticky: bool, green_latency: Duration) -> Bench {
    let (stop, stopped) = watch::channel(false);
    let blue = app("v1", "blue", Duration::ZERO, stopped.clone()).await;
    let green = app("v2", "green", green_latency, stopped.clone()).await;
    let route = Arc::new(Route::new("shop", weights, sticky));
    route.set_upstreams(Color::Blue, vec![blue]);
    route.set_upstreams(Color::Green, vec![green]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let (r, client) = (route.clone(), upstream_client());
    let handler = move |request, peer| forward(r.clone(), client.clone(), request, peer);
    tokio::spawn(serve(listener, handler, stopped, Duration::from_secs(5)));
    Bench {
        proxy,
        route,
        _stop: stop,
    }
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(proxy: SocketAddr, path: &str) -> (u16, String) {
    let uri: hyper::Uri = format!("http://{proxy}{path}").parse().unwrap();
    let response = client().get(uri).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_split_follows_the_weights_exactly_per_hundred_requests() {
    let b = bench(Weights::split(Color::Green, 10), false, Duration::ZERO).await;
    let client = client();
    let uri: hyper::Uri = format!("http://{}/", b.proxy).parse().unwrap();
    let mut green = 0;
    let mut first_hundred = Vec::new();
    for i in 0..1000 {
        let r = client.get(uri.clone()).await.unwrap();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        if body.as_ref() == b"v2 green\n" {
            green += 1;
            if i < 100 {
                first_hundred.push(i);
            }
        }
    }
    assert_eq!(green, 100);
    // Spread out, not the first ten in a row.
    assert_eq!(first_hundred.len(), 10);
    assert!(
        first_hundred.windows(2).all(|w| w[1] - w[0] > 1),
        "{first_hundred:?}"
    );
    let blue = b.route.metrics(Color::Blue).snapshot();
    let green_m = b.route.metrics(Color::Green).snapshot();
    assert_eq!((blue.requests, green_m.requests), (900, 100));
    assert_eq!(blue.errors + green_m.errors, 0);
    assert_eq!(blue.buckets.iter().sum::<u64>(), 900);
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_and_forwarding_headers_set() {
    let b = bench(Weights::all(Color::Blue), false, Duration::ZERO).await;
    let request = hyper::Request::get(format!("http://{}/headers", b.proxy))
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must not pass")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-end-to-end", "passes")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen = String::from_utf8_lossy(&body).to_lowercase();
    for dropped in ["x-hop:", "keep-alive:", "proxy-authorization:", "te:"] {
        assert!(
            !seen.contains(dropped),
            "{dropped} reached the app:\n{seen}"
        );
    }
    assert!(seen.contains("x-end-to-end: passes"), "{seen}");
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http"), "{seen}");
    assert!(
        seen.contains(&format!("host: {}", b.proxy)),
        "the Host header is kept: {seen}"
    );
    assert!(
        seen.contains(&format!("x-forwarded-host: {}", b.proxy)),
        "{seen}"
    );

    // The same rule on a response's headers.
    let mut headers = HeaderMap::new();
    headers.insert("connection", HeaderValue::from_static("close, x-private"));
    headers.insert("x-private", HeaderValue::from_static("1"));
    headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
    headers.insert("upgrade", HeaderValue::from_static("websocket"));
    headers.insert("content-type", HeaderValue::from_static("text/plain"));
    strip_hop_by_hop(&mut headers);
    let left: Vec<&str> = headers
        .keys()
        .map(hyper::header::HeaderName::as_str)
        .collect();
    assert_eq!(left, vec!["content-type"]);
}

#[tokio::test]
async fn bodies_stream_through_both_ways_without_buffering() {
    let b = bench(Weights::all(Color::Blue), false, Duration::ZERO).await;
    let (mut sender, body) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(4);
    let request = hyper::Request::post(format!("http://{}/echo", b.proxy))
        .body(body)
        .unwrap();
    let client: Client<HttpConnector, http_body_util::channel::Channel<Bytes, hyper::Error>> =
        Client::builder(TokioExecutor::new()).build_http();
    let answer = tokio::spawn(async move { client.request(request).await });
    sender
        .send_data(Bytes::from_static(b"first chunk;"))
        .await
        .unwrap();
    // The response starts before the request body is complete: nothing is buffered.
    let response = tokio::time::timeout(Duration::from_secs(5), answer)
        .await
        .expect("response headers arrive while the request is still open")
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk comes back before the rest is sent")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first.as_ref(), b"first chunk;");
    let big = Bytes::from(vec![b'x'; 4 << 20]);
    sender.send_data(big.clone()).await.unwrap();
    drop(sender);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest.len(), big.len());
    assert!(rest.iter().all(|b| *b == b'x'));
}

#[tokio::test]
async fn a_colour_taken_to_zero_finishes_its_open_requests() {
    let b = bench(
        Weights::all(Color::Green),
        false,
        Duration::from_millis(600),
    )
    .await;
    let proxy = b.proxy;
    let slow = tokio::spawn(async move { get(proxy, "/").await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while b.route.metrics(Color::Green).in_flight() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow request never arrived"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(b.route.metrics(Color::Green).in_flight(), 1);
    b.route.set_weights(Weights::all(Color::Blue));
    // New requests go to blue at once; the open one on green still completes.
    assert_eq!(get(proxy, "/").await, (200, "v1 blue\n".into()));
    assert!(
        !b.route
            .drained(Color::Green, Duration::from_millis(50))
            .await
    );
    assert!(b.route.drained(Color::Green, Duration::from_secs(5)).await);
    assert_eq!(slow.await.unwrap(), (200, "v2 green\n".into()));
}

#[tokio::test]
async fn no_target_is_a_503_and_a_dead_target_a_counted_502() {
    let b = bench(Weights::all(Color::Blue), false, Duration::ZERO).await;
    b.route.set_upstreams(Color::Blue, Vec::new());
    let (status, body) = get(b.proxy, "/").await;
    assert_eq!(status, 503, "{body}");
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    b.route.set_upstreams(Color::Blue, vec![closed]);
    let (status, _) = get(b.proxy, "/").await;
    assert_eq!(status, 502);
    assert_eq!(b.route.metrics(Color::Blue).snapshot().errors, 1);
}

#[tokio::test]
async fn a_sticky_cookie_is_set_and_honoured_while_its_colour_has_weight() {
    let b = bench(Weights::split(Color::Green, 50), true, Duration::ZERO).await;
    let uri = format!("http://{}/", b.proxy);
    let with_cookie = |cookie: &'static str| {
        hyper::Request::get(uri.clone())
            .header("cookie", cookie)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    for _ in 0..10 {
        let r = client()
            .request(with_cookie("bluegreen-shop=green"))
            .await
            .unwrap();
        assert!(r.headers().get("set-cookie").is_none(), "already pinned");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.as_ref(), b"v2 green\n");
    }
    let fresh = client().get(uri.parse().unwrap()).await.unwrap();
    let set = fresh
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(set.starts_with("bluegreen-shop="), "{set}");
    assert!(set.contains("HttpOnly"), "{set}");
    // Green to zero: the green cookie is no longer honoured, and is replaced.
    b.route.set_weights(Weights::all(Color::Blue));
    let r = client()
        .request(with_cookie("bluegreen-shop=green"))
        .await
        .unwrap();
    let set = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(set.starts_with("bluegreen-shop=blue;"), "{set}");
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), b"v1 blue\n");
}

#[tokio::test]
async fn a_post_body_reaches_the_app_intact() {
    let b = bench(Weights::all(Color::Blue), false, Duration::ZERO).await;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let payload = Bytes::from((0..=255u8).cycle().take(100_000).collect::<Vec<u8>>());
    let request = hyper::Request::post(format!("http://{}/echo", b.proxy))
        .body(Full::new(payload.clone()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        payload
    );
}

#[test]
fn the_demo_app_fails_the_configured_share_evenly() {
    let app = DemoApp {
        version: "v3".into(),
        color: "green".into(),
        error_rate: 0.3,
        latency: Duration::ZERO,
    };
    let failures: Vec<u64> = (0..100).filter(|n| app.fails(*n)).collect();
    assert_eq!(failures.len(), 30);
    assert!(
        failures.windows(2).all(|w| w[1] - w[0] <= 4),
        "{failures:?}"
    );
    let healthy = DemoApp {
        error_rate: 0.0,
        ..app
    };
    assert!((0..1000).all(|n| !healthy.fails(n)));
}

#[test]
fn window_quantiles_and_error_rates_come_from_counter_differences() {
    use bluegreen::local::proxy::{LATENCY_BOUNDS_US, Snapshot};
    let mut older = Snapshot {
        requests: 10,
        errors: 10,
        ..Snapshot::default()
    };
    older.buckets[0] = 10;
    let mut newer = older;
    newer.requests += 100;
    newer.errors += 5;
    newer.buckets[0] += 98; // ≤ 1 ms
    newer.buckets[6] += 2; // ≤ 100 ms
    let window = newer.since(&older);
    assert_eq!((window.requests, window.errors), (100, 5));
    assert_eq!(window.error_rate(), Some(0.05));
    assert_eq!(
        window.quantile(0.5),
        Some(Duration::from_micros(LATENCY_BOUNDS_US[0]))
    );
    assert_eq!(
        window.quantile(0.99),
        Some(Duration::from_micros(LATENCY_BOUNDS_US[6]))
    );
    assert_eq!(Snapshot::default().quantile(0.99), None);
}
