//! The embedded proxy against nginx, in one run, in front of the same backend.
//!
//! One `bluegreen demo-app` process is the backend. wrk (`-t2 -c64`, five alternating
//! rounds of 5 s after a 2 s warm-up, medians reported) measures it directly, through
//! the bluegreen proxy (the same `forward` on the same threads `bluegreen local` runs,
//! one per core) and through nginx (`worker_processes auto`, upstream keep-alive,
//! HTTP/1.1 to the backend). Prints requests/s and p99 for each and the proxy/nginx
//! ratios. Needs `wrk` and `nginx` on PATH (Debian packages; `scripts/bench` installs
//! them); skips with a message otherwise.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bluegreen::flow::{Color, Weights};
use bluegreen::local::proxy::{Route, serve_on_threads};

const CONNECTIONS: &str = "64";
const DURATION: &str = "5s";
/// Alternating rounds; medians are reported (nginx and the proxy share 2 cores with wrk
/// and the backend, so single runs are noisy).
const ROUNDS: usize = 5;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn found(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_listening(port: u16) -> bool {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// Requests per second and p99 (ms) from wrk's output.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    rps: f64,
    p99_ms: f64,
    errors: u64,
}

fn to_ms(text: &str) -> f64 {
    let (number, unit) = text
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((text, "ms"), |i| (&text[..i], &text[i..]));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => n,
    }
}

fn wrk(url: &str, duration: &str) -> Figures {
    let out = Command::new("wrk")
        .args(["-t2", "-c", CONNECTIONS, "-d", duration, "--latency", url])
        .output();
    let Ok(out) = out else {
        return Figures::default();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = Figures::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => f.rps = v.parse().unwrap_or(0.0),
            ["99%", v] => f.p99_ms = to_ms(v),
            ["Non-2xx", "or", "3xx", "responses:", v] => f.errors += v.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                f.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    f
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn report(name: &str, runs: &[Figures]) -> Figures {
    let f = Figures {
        rps: median(runs.iter().map(|r| r.rps).collect()),
        p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
        errors: runs.iter().map(|r| r.errors).sum(),
    };
    let each: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.rps)).collect();
    println!(
        "{name:<18} median {:>8.0} req/s  p99 {:>6.2} ms  errors {}   (rounds: {})",
        f.rps,
        f.p99_ms,
        f.errors,
        each.join(" ")
    );
    f
}

struct Reaped(Child);

/// nginx, stopped through its master (`-s stop`): killing the master alone would leave
/// its worker processes running.
struct Nginx {
    master: Child,
    conf: std::path::PathBuf,
    prefix: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let stopped = Command::new("nginx")
            .arg("-c")
            .arg(&self.conf)
            .arg("-p")
            .arg(&self.prefix)
            .args(["-s", "stop"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.master.kill();
        }
        let _ = self.master.wait();
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` builds it; nothing to check without the tools.
    }
    if !found("wrk") || !found("nginx") {
        println!("proxy bench skipped: needs wrk and nginx on PATH (scripts/bench installs them)");
        return;
    }
    let backend_port = free_port();
    let Ok(backend) = Command::new(env!("CARGO_BIN_EXE_bluegreen"))
        .args(["demo-app", "--port", &backend_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        println!("cannot start the backend");
        return;
    };
    let _backend = Reaped(backend);
    if !wait_listening(backend_port) {
        println!("the backend did not listen");
        return;
    }
    let backend_addr = SocketAddr::from(([127, 0, 0, 1], backend_port));

    // The bluegreen proxy as `bluegreen local` runs it: one thread per core.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let route = Arc::new(Route::new("bench", Weights::all(Color::Blue), false));
    route.set_upstreams(Color::Blue, vec![backend_addr]);
    let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
        println!("cannot bind the proxy");
        return;
    };
    let proxy_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let Ok(proxy_threads) =
        serve_on_threads(&listener, &route, threads, &stopped, Duration::from_secs(1))
    else {
        println!("cannot start the proxy");
        return;
    };

    // nginx with the usual reverse-proxy settings for keep-alive upstreams.
    let nginx_port = free_port();
    let dir = std::env::temp_dir().join(format!("bluegreen-bench-nginx-{}", std::process::id()));
    let _ = std::fs::create_dir_all(dir.join("logs"));
    let conf = format!(
        "worker_processes auto;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  upstream backend {{ server 127.0.0.1:{backend_port}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
",
        dir = dir.display()
    );
    let conf_path = dir.join("nginx.conf");
    if std::fs::write(&conf_path, conf).is_err() {
        println!("cannot write the nginx configuration");
        return;
    }
    let Ok(nginx) = Command::new("nginx")
        .arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        println!("cannot start nginx");
        return;
    };
    let nginx = Nginx {
        master: nginx,
        conf: conf_path.clone(),
        prefix: dir.clone(),
    };
    if !wait_listening(proxy_port) || !wait_listening(nginx_port) {
        println!("a proxy did not listen");
        return;
    }

    println!(
        "== proxy throughput and p99: wrk -t2 -c{CONNECTIONS}, {ROUNDS} alternating rounds of {DURATION}, same backend"
    );
    let url = |port: u16| format!("http://127.0.0.1:{port}/");
    for port in [backend_port, proxy_port, nginx_port] {
        let _ = wrk(&url(port), "2s");
    }
    let (mut direct, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        direct.push(wrk(&url(backend_port), DURATION));
        if round % 2 == 0 {
            ours.push(wrk(&url(proxy_port), DURATION));
            theirs.push(wrk(&url(nginx_port), DURATION));
        } else {
            theirs.push(wrk(&url(nginx_port), DURATION));
            ours.push(wrk(&url(proxy_port), DURATION));
        }
    }
    report("backend directly", &direct);
    let ours = report("bluegreen proxy", &ours);
    let theirs = report("nginx", &theirs);
    if theirs.rps > 0.0 && theirs.p99_ms > 0.0 {
        println!(
            "bluegreen / nginx (medians): throughput {:.2}x (goal >= 0.9x), p99 {:.2}x (lower is better)",
            ours.rps / theirs.rps,
            ours.p99_ms / theirs.p99_ms
        );
    }
    drop(nginx);
    let _ = stop.send(true);
    for thread in proxy_threads {
        let _ = thread.join();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
