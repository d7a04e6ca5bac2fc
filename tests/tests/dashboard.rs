//! The built-in dashboard in a real browser. journeyd (the real binary, HTTP only) receives a
//! hand-made set of events whose figures were worked out by hand from `config/rules.toml`;
//! headless Chromium renders `/`, and the dumped DOM must show exactly those figures: the phase
//! funnel, the touchpoints ranked by drop-off rate, dwell, scores, the Sankey and the
//! sparklines. A screenshot lands in `<target>/artifacts/dashboard.png`.
//!
//! Further runs check that a bad parameter shows the API's problem in a banner, that alerts in
//! the `/v1/alerts` shape are shown (firing and pending first, resolved muted) through a small
//! proxy that answers `/v1/alerts` itself, and that a 401 brings up the read-token field.
//!
//! Needs Chromium: `$CHROMIUM`, `/usr/bin/chromium` or `/usr/bin/chromium-browser`
//! (`apt-get install chromium`; CI installs it).

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journey_tests::{free_port, get_json, http, temp_dir, Service};
use serde_json::{json, Value};

const MINUTE: i64 = 60_000;

// ---- the hand-made events and their figures -----------------------------------------------------

/// The customers, one session each (no gap over 30 min), minutes after a base four hours ago,
/// classified by config/rules.toml:
///
/// | customer | min     | events                                              | ends      |
/// |----------|---------|-----------------------------------------------------|-----------|
/// | c-ann    | 0–8     | ad (cpc) → product → add → /cart → checkout → order | goal      |
/// | c-ben    | 10–15   | blog → /about (unclassified) → product → add → /cart | drop-off |
/// | c-cleo   | 20–23   | organic search → product → /compare                 | drop-off  |
/// | c-dan    | 30      | home page `/` (landing_page)                        | drop-off  |
/// | c-eve    | 40–55   | ticket opened → resolved (CSAT 4) → NPS 9           | drop-off  |
/// | c-fay    | 60–80   | lead → sales call → quote → deal won                | goal      |
/// | c-gus    | 90–92   | home page → /cart                                   | drop-off  |
/// | c-hana   | 100–109 | NPS 6 → /landing → product → add → checkout → order | goal      |
/// | c-ivy    | 115–135 | 1,200 product page views, 1 s apart                 | drop-off  |
const SCRIPT: &str = r#"
c-ann    0  web      page_view         {"url": "/lp/trail", "utm_medium": "cpc"}
c-ann    2  web      page_view         {"url": "/products/trail-runner"}
c-ann    4  web      add_to_cart       {}
c-ann    5  web      page_view         {"url": "/cart"}
c-ann    6  web      checkout_started  {}
c-ann    8  web      order_completed   {}
c-ben   10  web      page_view         {"url": "/blog/choosing-trail-shoes"}
c-ben   11  web      page_view         {"url": "/about"}
c-ben   12  web      page_view         {"url": "/products/trail-runner"}
c-ben   13  web      add_to_cart       {}
c-ben   15  web      page_view         {"url": "/cart"}
c-cleo  20  web      page_view         {"url": "/", "utm_medium": "organic"}
c-cleo  21  web      page_view         {"url": "/products/hiking-boot"}
c-cleo  23  web      page_view         {"url": "/compare"}
c-dan   30  web      page_view         {"url": "/"}
c-eve   40  service  ticket_opened     {}
c-eve   50  service  ticket_resolved   {"csat": 4}
c-eve   55  service  survey_answered   {"survey": "nps", "score": 9}
c-fay   60  crm      lead_created      {}
c-fay   70  crm      sales_call        {}
c-fay   75  crm      quote_sent        {}
c-fay   80  crm      deal_won          {}
c-gus   90  web      page_view         {"url": "/"}
c-gus   92  web      page_view         {"url": "/cart"}
c-hana 100  service  survey_answered   {"survey": "nps", "score": 6}
c-hana 102  web      page_view         {"url": "/landing"}
c-hana 104  web      page_view         {"url": "/products/trail-runner"}
c-hana 105  web      add_to_cart       {}
c-hana 107  web      checkout_started  {}
c-hana 109  web      order_completed   {}
"#;

/// The events of `SCRIPT` (customer, minute, source, event, attributes) and c-ivy's views,
/// in time order, `base` being minute 0.
fn events(base: i64) -> Vec<Value> {
    let event = |customer: &str, ts: i64, source: &str, name: &str, attributes: Value| {
        json!({
            "customer_id": customer, "ts": ts, "source": source, "event": name,
            "attributes": attributes,
        })
    };
    let mut v: Vec<Value> = SCRIPT
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut f = line.split_whitespace();
            let mut next = || {
                f.next()
                    .unwrap_or_else(|| panic!("short SCRIPT line: {line}"))
            };
            let (customer, minute, source, name) = (next(), next(), next(), next());
            let minute: i64 = minute.parse().expect("SCRIPT minutes are integers");
            let json = &line[line.find('{').unwrap_or(line.len())..];
            let attributes = serde_json::from_str(json).expect("SCRIPT attributes are JSON");
            event(customer, base + minute * MINUTE, source, name, attributes)
        })
        .collect();
    assert_eq!(v.len(), 30, "every SCRIPT line is an event");
    for i in 0..IVY_VIEWS {
        let ts = base + 115 * MINUTE + i * 1000;
        let url = json!({ "url": "/products/trail-runner" });
        v.push(event("c-ivy", ts, "web", "page_view", url));
    }
    v.sort_by_key(|e| e["ts"].as_i64());
    v
}

const IVY_VIEWS: i64 = 1200;

/// Touchpoint, visits, sessions, exits, drop-offs, completions (goals only).
type TpRow = (&'static str, u64, u64, u64, u64, Option<u64>);

/// Every touchpoint with traffic, in rules order.
const TOUCHPOINTS: [TpRow; 17] = [
    ("ad_click", 1, 1, 0, 0, None),
    ("search_visit", 1, 1, 0, 0, None),
    ("blog_post", 1, 1, 0, 0, None),
    ("landing_page", 3, 3, 1, 1, None), // dan, gus, hana; dan left there
    ("product_page", 1204, 5, 1, 1, None), // ann, ben, cleo, hana, 1,200 × ivy
    ("compare", 1, 1, 1, 1, None),      // cleo
    ("lead_created", 1, 1, 0, 0, None),
    ("add_to_cart", 3, 3, 0, 0, None), // ann, ben, hana
    ("cart", 3, 3, 2, 2, None),        // ann, ben, gus; ben and gus left there
    ("checkout", 2, 2, 0, 0, None),    // ann, hana
    ("sales_call", 1, 1, 0, 0, None),
    ("quote_sent", 1, 1, 0, 0, None),
    ("order_confirmed", 2, 2, 2, 0, Some(2)), // goal: exits, no drop-offs
    ("deal_won", 1, 1, 1, 0, Some(1)),
    ("ticket_opened", 1, 1, 0, 0, None),
    ("ticket_resolved", 1, 1, 0, 0, None),
    ("nps_survey", 2, 2, 1, 1, None), // eve left there; hana went on
];

/// Touchpoints of the rules that get no event.
const IDLE: [&str; 5] = [
    "social_visit",
    "newsletter_signup",
    "account_login",
    "review",
    "referral",
];

/// The five non-zero drop-off rates (1, 2/3, 1/2, 1/3, 1/5): the top of the ranking.
const TOP: [&str; 5] = [
    "compare",
    "cart",
    "nps_survey",
    "landing_page",
    "product_page",
];

/// Phase, reached: journeys by furthest phase are dan (awareness); cleo, ivy (consideration);
/// ann, ben, fay, gus (decision); eve, hana (advocacy; hana starts there).
const FUNNEL: [(&str, i64); 5] = [
    ("awareness", 9),
    ("consideration", 8),
    ("decision", 6),
    ("retention", 2),
    ("advocacy", 2),
];

/// Phase dwell: samples and mean. Awareness: ann 2 min, ben 2 min, cleo 1 min, gus 2 min
/// (straight to decision); consideration: ann 2 min, ben 1 min, fay 10 min; retention: eve
/// 15 min (ticket to NPS). Decision never moves on; hana starts in advocacy.
const PHASE_DWELL: [(&str, u64, &str); 5] = [
    ("awareness", 4, "1 min 45 s"),
    ("consideration", 3, "4 min 20 s"),
    ("decision", 0, "–"),
    ("retention", 1, "15 min"),
    ("advocacy", 0, "–"),
];

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

/// Thousands separators, as the dashboard writes counts (en-US).
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---- a minimal reader for the dumped DOM --------------------------------------------------------

/// One element of the serialised DOM: its attributes and its markup up to the matching end tag.
#[derive(Debug)]
struct Element<'a> {
    attrs: HashMap<String, String>,
    inner: &'a str,
}

const VOID: [&str; 9] = [
    "area", "br", "col", "hr", "img", "input", "link", "meta", "source",
];

impl<'a> Element<'a> {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }

    /// The text content, entities decoded, whitespace collapsed; tags count as spaces.
    fn text(&self) -> String {
        let mut out = String::new();
        let mut in_tag = false;
        for c in self.inner.chars() {
            match c {
                '<' => in_tag = true,
                '>' => {
                    in_tag = false;
                    out.push(' ');
                }
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        decode(&out)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Descendants that carry `attr`.
    fn all(&self, attr: &str) -> Vec<Element<'a>> {
        elements(self.inner, attr)
    }

    /// The one descendant whose `attr` is `value`.
    fn find(&self, attr: &str, value: &str) -> Element<'a> {
        let mut hits: Vec<Element<'a>> = self
            .all(attr)
            .into_iter()
            .filter(|e| e.attr(attr) == Some(value))
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "one element with {attr}=\"{value}\" expected"
        );
        hits.remove(0)
    }

    /// The text of the descendant with `data-field` = `field`.
    fn field(&self, field: &str) -> String {
        self.find("data-field", field).text()
    }

    fn field_value(&self, field: &str) -> String {
        self.find("data-field", field)
            .attr("data-value")
            .unwrap_or_default()
            .to_string()
    }
}

fn decode(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Every element of `html` that carries the attribute `attr`, in document order (nested ones
/// too). Written for the markup Chromium serialises: attribute values in double quotes.
fn elements<'a>(html: &'a str, attr: &str) -> Vec<Element<'a>> {
    let mut out = Vec::new();
    let bytes = html.as_bytes();
    let mut i = 0;
    while let Some(off) = html[i..].find('<') {
        let start = i + off;
        i = start + 1;
        if !bytes.get(i).is_some_and(u8::is_ascii_alphabetic) {
            continue;
        }
        let Some((name, attrs, end)) = start_tag(html, i) else {
            break;
        };
        if attrs.contains_key(attr) {
            let self_closing = html[..end].ends_with("/>") || VOID.contains(&name.as_str());
            let inner = if self_closing {
                ""
            } else {
                &html[end..matching_end(html, end, &name)]
            };
            out.push(Element { attrs, inner });
        }
    }
    out
}

/// The name, attributes and end offset of the start tag whose name begins at `i`.
fn start_tag(html: &str, i: usize) -> Option<(String, HashMap<String, String>, usize)> {
    let rest = &html[i..];
    let name_len = rest.find(|c: char| c.is_whitespace() || c == '>' || c == '/')?;
    let name = rest[..name_len].to_ascii_lowercase();
    let mut attrs = HashMap::new();
    let mut j = i + name_len;
    let b = html.as_bytes();
    loop {
        while j < b.len() && (b[j].is_ascii_whitespace() || b[j] == b'/') {
            j += 1;
        }
        if j >= b.len() {
            return None;
        }
        if b[j] == b'>' {
            return Some((name, attrs, j + 1));
        }
        let n_end = j + html[j..].find(|c: char| c.is_whitespace() || c == '=' || c == '>')?;
        let key = html[j..n_end].to_string();
        j = n_end;
        let mut value = String::new();
        if b.get(j) == Some(&b'=') && b.get(j + 1) == Some(&b'"') {
            let v_end = j + 2 + html[j + 2..].find('"')?;
            value = decode(&html[j + 2..v_end]);
            j = v_end + 1;
        }
        attrs.insert(key, value);
    }
}

/// The offset of the end tag closing the `name` element whose content starts at `from`.
fn matching_end(html: &str, from: usize, name: &str) -> usize {
    let open = format!("<{name}");
    let close = format!("</{name}>");
    let mut depth = 1;
    let mut i = from;
    loop {
        let next_close = html[i..].find(&close).map(|o| i + o);
        let next_open = html[i..]
            .match_indices(&open)
            .map(|(o, _)| i + o)
            .find(|&o| {
                html[o + open.len()..]
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_whitespace() || c == '>')
            });
        match (next_open, next_close) {
            (Some(o), Some(c)) if o < c => {
                depth += 1;
                i = o + open.len();
            }
            (_, Some(c)) => {
                depth -= 1;
                if depth == 0 {
                    return c;
                }
                i = c + close.len();
            }
            (_, None) => return html.len(),
        }
    }
}

/// The element with this id.
fn by_id<'a>(html: &'a str, id: &str) -> Element<'a> {
    let mut hits: Vec<Element<'a>> = elements(html, "id")
        .into_iter()
        .filter(|e| e.attr("id") == Some(id))
        .collect();
    assert_eq!(hits.len(), 1, "the dashboard has one element #{id}");
    hits.remove(0)
}

// ---- Chromium -----------------------------------------------------------------------------------

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    for c in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(c).exists() {
            return PathBuf::from(c);
        }
    }
    panic!(
        "no Chromium for the dashboard test (looked at $CHROMIUM, /usr/bin/chromium, \
         /usr/bin/chromium-browser): install it with `apt-get install chromium`"
    );
}

/// Kills Chromium's whole process group (renderers and helpers included).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Headless Chromium on `url` with `extra` arguments; its standard output. Each run gets a fresh
/// profile; a run that takes more than 60 s is killed and fails the test.
fn run_chromium(profile: &Path, url: &str, extra: &[&str]) -> String {
    let bin = chromium();
    let _ = std::fs::remove_dir_all(profile);
    let mut child = Command::new(&bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=15000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let pgid = child.id();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => break None,
        }
    };
    // Helpers that outlive the browser would keep the pipes open.
    kill_group(pgid);
    let _ = child.wait();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let _ = std::fs::remove_dir_all(profile);
    match status {
        None => panic!("Chromium did not finish within 60 s on {url}; killed it\n{stderr}"),
        Some(s) if !s.success() => panic!("Chromium failed on {url}: {s}\n{stderr}"),
        Some(_) => stdout,
    }
}

/// The DOM Chromium serialises after the page ran, without the script (whose source is no DOM).
fn dump_dom(profile: &Path, url: &str) -> String {
    let dom = run_chromium(profile, url, &["--dump-dom"]);
    assert!(
        dom.contains("</html>"),
        "Chromium printed no DOM for {url}:\n{dom}"
    );
    let body = dom.split("<script").next().unwrap_or_default().to_string();
    let body_tag = elements(&body, "data-state");
    assert!(
        !body_tag.is_empty(),
        "the page has no body[data-state]: {body}"
    );
    body
}

/// `<target>/artifacts`, the target directory taken from this test binary's path
/// (`<target>/<profile>/deps/<test>`), so `CARGO_TARGET_DIR` is honoured.
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    exe.ancestors()
        .nth(3)
        .map(|t| t.join("artifacts"))
        .expect("the test binary sits in <target>/<profile>/deps")
}

// ---- the service --------------------------------------------------------------------------------

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn start_service(dir: &Path, extra: &str) -> Service {
    let port = free_port();
    let config = dir.join("journeyd.toml");
    // HTTP input is one stream: the closing event moves every task's watermark.
    std::fs::write(
        &config,
        format!(
            r#"
[http]
listen = "127.0.0.1:{port}"
{extra}
[breakdown]
attributes = ["persona"]
segment_dimensions = ["persona"]
[runtime]
workers = 1
publish_interval = "100ms"
tick_interval = "200ms"
[rules]
watch = false
"#
        ),
    )
    .expect("writing the config");
    let mut service = Service::start(&config, port);
    service.wait_ready();
    service
}

fn post(port: u16, events: &[Value]) {
    let body: String = events.iter().map(|e| format!("{e}\n")).collect();
    let (status, reply) = http(port, "POST", "/v1/events", &body).expect("POST /v1/events");
    assert_eq!(status, 202, "{reply}");
    let reply: Value = serde_json::from_str(&reply).expect("a JSON reply");
    assert_eq!(reply["accepted"], events.len(), "{reply}");
    assert_eq!(reply["rejected"], 0, "{reply}");
}

/// Touchpoint → (visits, sessions, exits, drop-offs) from `/v1/touchpoints`.
fn api_touchpoints(port: u16) -> Option<HashMap<String, (u64, u64, u64, u64)>> {
    let v = get_json(port, "/v1/touchpoints")?;
    let n = |t: &Value, k: &str| t[k].as_u64().unwrap_or(u64::MAX);
    Some(
        v["touchpoints"]
            .as_array()?
            .iter()
            .filter(|t| n(t, "visits") > 0 || n(t, "sessions") > 0)
            .map(|t| {
                let name = t["name"].as_str().unwrap_or_default().to_string();
                (
                    name,
                    (
                        n(t, "visits"),
                        n(t, "sessions"),
                        n(t, "exits"),
                        n(t, "drop_offs"),
                    ),
                )
            })
            .collect(),
    )
}

fn expected_touchpoints() -> HashMap<String, (u64, u64, u64, u64)> {
    TOUCHPOINTS
        .iter()
        .map(|&(name, v, s, x, d, _)| (name.to_string(), (v, s, x, d)))
        .collect()
}

/// Loads the events and waits until every session is closed and published. Sessions close
/// when the watermark passes their last event + 30 min: `c-zed` then sends one unclassified
/// event at the wall-clock time, which (HTTP input being one stream for every task) puts the watermark at
/// now − 5 min, past every session above, and adds nothing to any figure shown.
///
/// The API must agree with the hand-computed figures before the browser is asked: a mismatch
/// here is the engine's (or this file's arithmetic), not the dashboard's.
fn load(port: u16) {
    let base = (now_ms() - 4 * 60 * MINUTE) / MINUTE * MINUTE;
    post(port, &events(base));
    post(
        port,
        &[json!({ "customer_id": "c-zed", "ts": now_ms(), "source": "web", "event": "heartbeat" })],
    );
    let want = expected_touchpoints();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        last = api_touchpoints(port);
        if last.as_ref() == Some(&want) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        last.as_ref(),
        Some(&want),
        "/v1/touchpoints never matched the hand-computed (visits, sessions, exits, drop-offs)"
    );
    let funnel = get_json(port, "/v1/funnel").expect("GET /v1/funnel");
    let reached: Vec<(String, i64)> = funnel["funnel"]["steps"]
        .as_array()
        .expect("funnel steps")
        .iter()
        .map(|s| {
            let phase = s["phase"].as_str().unwrap_or_default().to_string();
            (phase, s["reached"].as_i64().unwrap_or(-1))
        })
        .collect();
    let want: Vec<(String, i64)> = FUNNEL.iter().map(|(p, n)| (p.to_string(), *n)).collect();
    assert_eq!(
        reached, want,
        "/v1/funnel disagrees with the hand-computed funnel"
    );
}

// ---- a proxy that answers /v1/alerts itself -----------------------------------------------------

/// Forwards GETs to journeyd, except those under `path` (e.g. `/v1/alerts`), which it answers
/// with `canned`.
struct AlertsProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AlertsProxy {
    fn start(upstream: u16, alerts: Value) -> AlertsProxy {
        AlertsProxy::answering(upstream, "/v1/alerts", alerts)
    }

    fn answering(upstream: u16, path: &'static str, canned: Value) -> AlertsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("non-blocking accept");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let canned = canned.to_string();
                        std::thread::spawn(move || serve_one(conn, upstream, path, &canned));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        AlertsProxy {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for AlertsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request per connection, then close (`Connection: close`).
fn serve_one(mut conn: TcpStream, upstream: u16, canned_path: &str, canned: &str) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, body) = if path.starts_with(canned_path) {
        (200, canned.to_string())
    } else {
        http(upstream, "GET", &path, "").unwrap_or((502, "{\"detail\":\"upstream\"}".into()))
    };
    let kind = if path == "/" || path.starts_with("/#") {
        "text/html; charset=utf-8"
    } else {
        "application/json"
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

// ---- the tests ----------------------------------------------------------------------------------

#[test]
fn dashboard_shows_the_hand_computed_figures() {
    let dir = temp_dir("dashboard");
    let service = start_service(&dir, "");
    let port = service.port;
    load(port);
    let transitions = get_json(port, "/v1/transitions?limit=1000").expect("GET /v1/transitions");
    let transitions = transitions["transitions"]
        .as_array()
        .expect("a transition list")
        .clone();

    let moments = get_json(port, "/v1/moments").expect("GET /v1/moments");

    let url = format!("http://127.0.0.1:{port}/");
    let dom = dump_dom(&dir.join("chromium-main"), &url);
    check_dom(&dom, &transitions);
    check_moments_match_the_api(&dom, &moments);

    // The screenshot, for people: CI keeps it as an artifact.
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts)
        .unwrap_or_else(|e| panic!("creating {}: {e}", artifacts.display()));
    let png = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(
        &dir.join("chromium-shot"),
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,1800",
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("reading {}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is no PNG",
        png.display()
    );
    assert!(
        bytes.len() > 10_000,
        "{} has only {} bytes: a blank page?",
        png.display(),
        bytes.len()
    );
    eprintln!("dashboard screenshot: {}", png.display());

    // A bad parameter (here from a shared link) shows the API's problem; the rest still renders.
    let dom = dump_dom(
        &dir.join("chromium-bad"),
        &format!("http://127.0.0.1:{port}/#range=24h&breakdown=nope"),
    );
    let body = &elements(&dom, "data-state")[0];
    assert_eq!(body.attr("data-state"), Some("error"));
    let banner = by_id(&dom, "banner");
    assert!(banner.attr("hidden").is_none(), "the banner is shown");
    assert!(
        banner.text().contains("unknown breakdown `nope`"),
        "the banner names the problem: {}",
        banner.text()
    );
    let rows = by_id(&dom, "touchpoints").all("data-touchpoint");
    assert_eq!(rows.len(), TOUCHPOINTS.len(), "other panels still render");

    // Alerts in the shape of /v1/alerts with evaluation on.
    let proxy = AlertsProxy::start(port, canned_alerts());
    let dom = dump_dom(
        &dir.join("chromium-alerts"),
        &format!("http://127.0.0.1:{}/", proxy.port),
    );
    check_alerts(&dom);
    drop(proxy);
    assert!(service.terminate(), "journeyd exits cleanly");
}

fn check_dom(dom: &str, transitions: &[Value]) {
    check_state_and_key_figures(dom);
    assert!(by_id(dom, "compare-panel").attr("hidden").is_some());
    check_breakdowns(dom);
    check_funnel(dom);
    check_map(dom);
    check_touchpoints(dom);
    check_sankey(dom, transitions);
    check_dwell_and_scores(dom);
}

/// The breakdown selector offers what `/v1/funnel` lists: built-ins and configured attributes.
fn check_breakdowns(dom: &str) {
    let options: Vec<String> = elements(by_id(dom, "breakdown").inner, "value")
        .iter()
        .filter_map(|o| o.attr("value").map(str::to_string))
        .collect();
    assert_eq!(options, ["", "source", "first_touchpoint", "persona"]);
}

fn check_state_and_key_figures(dom: &str) {
    let body = &elements(dom, "data-state")[0];
    assert_eq!(
        body.attr("data-state"),
        Some("ready"),
        "the dashboard finished loading without errors (banner: {})",
        by_id(dom, "banner").text()
    );
    assert!(
        by_id(dom, "banner").attr("hidden").is_some(),
        "no error banner"
    );
    assert!(
        by_id(dom, "token-panel").attr("hidden").is_some(),
        "no token prompt"
    );

    // Key figures.
    let kpis = by_id(dom, "kpis");
    assert_eq!(
        kpis.find("data-field", "journeys").text(),
        "9 journeys started"
    );
    assert_eq!(
        kpis.find("data-field", "completions").attr("data-value"),
        Some("3")
    );
    assert_eq!(
        kpis.find("data-field", "visits").text(),
        "1,229 touchpoint visits"
    );

    // Alerts: whatever the evaluation state, it is shown.
    let alerts = by_id(dom, "alerts");
    let state = alerts.attr("data-evaluation").unwrap_or_default();
    assert!(
        ["not configured", "enabled", "disabled"].contains(&state),
        "alert evaluation state shown: {state:?}"
    );
}

/// The moments-of-truth panel shows `/v1/moments` row by row, in its ranking (the rendering of
/// each figure is checked against a hand-made answer in `dashboard_segments_…`).
fn check_moments_match_the_api(dom: &str, moments: &Value) {
    let panel = by_id(dom, "moments-panel");
    assert!(panel.attr("hidden").is_none(), "the panel is shown");
    let want = moments["moments"].as_array().expect("a moments list");
    assert!(!want.is_empty(), "moments for this data: {moments}");
    let rows = panel.all("data-rank");
    assert_eq!(rows.len(), want.len());
    for (row, m) in rows.iter().zip(want) {
        assert_eq!(row.attr("data-touchpoint"), m["touchpoint"].as_str());
        assert_eq!(
            row.field_value("touched_journeys"),
            m["touched"]["journeys"].to_string()
        );
        assert_eq!(
            row.field_value("not_touched_journeys"),
            m["not_touched"]["journeys"].to_string()
        );
    }
}

/// The touchpoints of each phase in config/rules.toml, in rules order; ★ the moments of truth.
const MAP: [(&str, &[&str]); 5] = [
    (
        "awareness",
        &[
            "ad_click",
            "social_visit",
            "search_visit",
            "blog_post",
            "landing_page",
        ],
    ),
    (
        "consideration",
        &[
            "product_page",
            "compare",
            "lead_created",
            "newsletter_signup",
        ],
    ),
    (
        "decision",
        &[
            "add_to_cart",
            "cart",
            "checkout★",
            "sales_call",
            "quote_sent",
            "order_confirmed★",
            "deal_won",
        ],
    ),
    (
        "retention",
        &["ticket_opened", "ticket_resolved★", "account_login"],
    ),
    ("advocacy", &["nps_survey", "review", "referral"]),
];

/// The journey map: phases as columns with reach and time in phase, each phase's touchpoints
/// with visits, drop-off rate, dwell and experience, and the same map as a downloadable SVG.
fn check_map(dom: &str) {
    let map = by_id(dom, "journey-map");
    let columns = map.all("data-map-phase");
    let phases = values(&columns, "data-map-phase");
    assert_eq!(
        phases,
        MAP.map(|(p, _)| p),
        "one column per phase, in order"
    );
    let first = FUNNEL[0].1 as f64;
    for ((column, (phase, tps)), (_, reached)) in columns.iter().zip(MAP).zip(FUNNEL) {
        let head = column.find("data-map-head", phase);
        assert_eq!(head.field_value("reached"), reached.to_string(), "{phase}");
        assert_eq!(
            head.field("from_start"),
            pct(reached as f64 / first),
            "{phase}: share of all journeys"
        );
        let cards = column.all("data-map-touchpoint");
        let names: Vec<String> = cards
            .iter()
            .map(|c| {
                let name = c.attr("data-map-touchpoint").unwrap_or_default();
                let mot = c.attr("data-moment-of-truth") == Some("true");
                format!("{name}{}", if mot { "★" } else { "" })
            })
            .collect();
        assert_eq!(names, tps, "{phase}: its touchpoints in rules order");
    }
    // Time in phase: retention's one sample (eve, ticket to NPS); decision never moves on.
    let head = |p: &str| map.find("data-map-head", p);
    assert_eq!(head("retention").field("dwell_p50"), "15 min");
    assert_eq!(head("decision").field("dwell_p50"), "–");

    for (name, visits, sessions, _, drop_offs, _) in TOUCHPOINTS {
        let card = map.find("data-map-touchpoint", name);
        assert_eq!(card.field("visits"), thousands(visits), "{name}: visits");
        assert_eq!(
            card.field("drop_off_rate"),
            pct(drop_offs as f64 / sessions as f64),
            "{name}: drop-off rate"
        );
        assert!(card.attr("data-idle").is_none(), "{name} has traffic");
    }
    for name in IDLE {
        let card = map.find("data-map-touchpoint", name);
        assert_eq!(
            card.attr("data-idle"),
            Some("true"),
            "{name} has no traffic"
        );
        assert_eq!(card.field("visits"), "0");
    }
    assert_eq!(
        map.find("data-map-touchpoint", "ticket_opened")
            .field("dwell_p50"),
        "10 min",
        "ticket opened to resolved"
    );
    // Experience: NPS 0 (one promoter, one detractor) is fair; a CSAT of 4 on a 1–5 scale is
    // good (0.75 of the way up); touchpoints without scores have none.
    let experience = |name: &str| {
        map.find("data-map-touchpoint", name)
            .attr("data-experience")
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(experience("nps_survey"), "fair");
    assert_eq!(
        map.find("data-map-touchpoint", "nps_survey").field("score"),
        "NPS 0.0"
    );
    assert_eq!(experience("ticket_resolved"), "good");
    assert_eq!(experience("cart"), "none");

    // The download link carries the same map as a standalone SVG document.
    let link = by_id(dom, "map-download");
    assert!(link.attr("hidden").is_none(), "the download link is shown");
    let href = link.attr("href").unwrap_or_default();
    let svg = percent_decode(
        href.strip_prefix("data:image/svg+xml;charset=utf-8,")
            .unwrap_or_else(|| panic!("an SVG data URL: {href:.80}")),
    );
    assert!(
        svg.starts_with("<svg") && svg.contains(r#"xmlns="http://www.w3.org/2000/svg""#),
        "a standalone SVG: {svg:.200}"
    );
    for (_, tps) in MAP {
        for tp in tps {
            let name = tp.trim_end_matches('★');
            assert!(
                svg.contains(&format!(r#"data-map-touchpoint="{name}""#)),
                "the SVG has {name}"
            );
        }
    }
    assert_eq!(
        elements(&svg, "data-map-touchpoint").len(),
        map.all("data-map-touchpoint").len(),
        "the same cards as on the page"
    );
}

/// `%XX` escapes decoded (what `encodeURIComponent` writes), as UTF-8.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reached, conversions and drop-offs per phase.
fn check_funnel(dom: &str) {
    let funnel = by_id(dom, "funnel");
    let rows = funnel.all("data-phase");
    let phases = values(&rows, "data-phase");
    let want: Vec<&str> = FUNNEL.iter().map(|(p, _)| *p).collect();
    assert_eq!(phases, want, "funnel phases in rules order");
    let first = FUNNEL[0].1 as f64;
    for (k, (row, (phase, reached))) in rows.iter().zip(FUNNEL).enumerate() {
        assert_eq!(
            row.field("reached"),
            reached.to_string(),
            "{phase}: reached"
        );
        assert_eq!(row.field_value("reached"), reached.to_string(), "{phase}");
        assert_eq!(
            row.field("from_start"),
            pct(reached as f64 / first),
            "{phase}"
        );
        match FUNNEL.get(k + 1) {
            Some((_, next)) => {
                assert_eq!(
                    row.field("conversion"),
                    pct(*next as f64 / reached as f64),
                    "{phase}"
                );
                assert_eq!(
                    row.field("drop_off"),
                    (reached - next).to_string(),
                    "{phase}"
                );
            }
            None => {
                assert_eq!(row.field("conversion"), "–", "{phase}: last phase");
                assert_eq!(row.field("drop_off"), "–", "{phase}: last phase");
            }
        }
    }
}

/// Touchpoints ranked by drop-off rate, with their figures and sparklines.
fn check_touchpoints(dom: &str) {
    let table = by_id(dom, "touchpoints");
    let rows = table.all("data-touchpoint");
    let names = values(&rows, "data-touchpoint");
    assert_eq!(names[..TOP.len()], TOP, "highest drop-off rates first");
    let shown: BTreeSet<&str> = names.iter().copied().collect();
    let want: BTreeSet<&str> = TOUCHPOINTS.iter().map(|t| t.0).collect();
    assert_eq!(shown, want, "every touchpoint with traffic, and only those");
    assert_eq!(names.len(), want.len(), "each touchpoint once");
    let rates: Vec<f64> = rows
        .iter()
        .map(|r| r.field_value("drop_off_rate").parse().unwrap_or(f64::NAN))
        .collect();
    assert!(
        rates.windows(2).all(|w| w[0] >= w[1]),
        "ordered by drop-off rate: {rates:?}"
    );
    for (rank, row) in rows.iter().enumerate() {
        let name = row.attr("data-touchpoint").unwrap_or_default();
        let &(_, visits, sessions, exits, drops, completions) = TOUCHPOINTS
            .iter()
            .find(|t| t.0 == name)
            .expect("a known touchpoint");
        assert_eq!(row.attr("data-rank"), Some((rank + 1).to_string().as_str()));
        assert_eq!(row.field("visits"), thousands(visits), "{name}: visits");
        assert_eq!(
            row.field("sessions"),
            thousands(sessions),
            "{name}: sessions"
        );
        assert_eq!(row.field("exits"), thousands(exits), "{name}: exits");
        assert_eq!(
            row.field("drop_offs"),
            thousands(drops),
            "{name}: drop-offs"
        );
        let rate = drops as f64 / sessions as f64;
        assert_eq!(
            row.field("drop_off_rate"),
            pct(rate),
            "{name}: drop-off rate"
        );
        let value: f64 = row.field_value("drop_off_rate").parse().unwrap_or(f64::NAN);
        assert!((value - rate).abs() < 1e-9, "{name}: drop-off rate {value}");
        let want_completions = completions.map_or("–".to_string(), thousands);
        assert_eq!(
            row.field("completions"),
            want_completions,
            "{name}: completions"
        );
        // Its sparkline: sessions per step over the range add up to the table's sessions.
        let spark = row.find("data-sparkline", name);
        assert!(spark.attr("aria-label").is_some_and(|l| !l.is_empty()));
        assert_eq!(
            spark.attr("data-sessions-total"),
            Some(sessions.to_string().as_str()),
            "{name}: sparkline sessions"
        );
        let points: usize = spark
            .attr("data-points")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        assert!(
            (12..=60).contains(&points),
            "{name}: {points} sparkline points"
        );
        assert!(
            spark.inner.contains("<rect"),
            "{name}: sparkline bars drawn"
        );
    }
    let idle = by_id(dom, "touchpoints-idle");
    let idle: BTreeSet<&str> = idle
        .attr("data-idle")
        .unwrap_or_default()
        .split(',')
        .collect();
    assert_eq!(
        idle,
        IDLE.into_iter().collect(),
        "touchpoints without traffic listed apart"
    );
}

/// The Sankey: the 30 most frequent transitions of `/v1/transitions`, links sized by count.
fn check_sankey(dom: &str, transitions: &[Value]) {
    let sankey = by_id(dom, "sankey");
    assert!(sankey
        .attr("aria-label")
        .is_some_and(|l| l.contains("Sankey")));
    let links = sankey.all("data-count");
    assert_eq!(
        transitions.len(),
        32,
        "the events make 32 distinct transitions"
    );
    assert_eq!(links.len(), 30, "the Sankey is limited to the top 30 links");
    for t in &transitions[..30] {
        let (from, to) = (
            t["from"].as_str().unwrap_or(""),
            t["to"].as_str().unwrap_or(""),
        );
        let link = links
            .iter()
            .find(|l| l.attr("data-from") == Some(from) && l.attr("data-to") == Some(to))
            .unwrap_or_else(|| panic!("no Sankey link {from} → {to}"));
        assert_eq!(
            link.attr("data-count"),
            Some(t["count"].to_string().as_str())
        );
    }
    let pa = links
        .iter()
        .find(|l| {
            l.attr("data-from") == Some("product_page") && l.attr("data-to") == Some("add_to_cart")
        })
        .expect("product_page → add_to_cart");
    assert_eq!(pa.attr("data-count"), Some("3"), "ann, ben and hana");
    let nodes: BTreeSet<String> = sankey
        .all("data-node")
        .iter()
        .filter_map(|n| n.attr("data-node").map(str::to_string))
        .collect();
    assert!(
        nodes.contains("(start)") && nodes.contains("(exit)") && nodes.len() > 10,
        "{nodes:?}"
    );
    assert!(
        by_id(dom, "sankey-note")
            .text()
            .starts_with("30 of 32 transitions"),
        "{}",
        by_id(dom, "sankey-note").text()
    );
}

/// Dwell per phase (from the funnel) and per touchpoint; experience scores.
fn check_dwell_and_scores(dom: &str) {
    let phase_dwell = by_id(dom, "phase-dwell");
    for (phase, count, mean) in PHASE_DWELL {
        let row = phase_dwell.find("data-phase", phase);
        assert_eq!(
            row.field("dwell_count"),
            count.to_string(),
            "{phase}: dwell samples"
        );
        assert_eq!(row.field("dwell_mean"), mean, "{phase}: mean dwell");
    }
    // product_page: ann, ben, cleo and hana 1 sample each, ivy 1,199 (1 s each).
    let tp_dwell = by_id(dom, "tp-dwell");
    let row = tp_dwell.find("data-touchpoint", "product_page");
    assert_eq!(row.field("dwell_count"), "1,203");
    let row = tp_dwell.find("data-touchpoint", "ticket_opened");
    assert_eq!(row.field("dwell_count"), "1");
    assert_eq!(
        row.field("dwell_mean"),
        "10 min",
        "ticket opened to resolved"
    );

    // Experience scores: eve's CSAT 4; NPS answers 9 (eve) and 6 (hana).
    let scores = by_id(dom, "scores");
    let csat = scores.find("data-touchpoint", "ticket_resolved");
    assert_eq!(csat.field("score_count"), "1");
    assert_eq!(csat.field("score_mean"), "4.0");
    assert_eq!(csat.field("nps"), "–", "CSAT has no NPS");
    let nps = scores.find("data-touchpoint", "nps_survey");
    assert_eq!(nps.field("score_count"), "2");
    assert_eq!(nps.field("score_mean"), "7.5");
    assert_eq!(nps.field("nps"), "0.0");
    assert_eq!(nps.field("promoters"), "1");
    assert_eq!(nps.field("passives"), "0");
    assert_eq!(nps.field("detractors"), "1");
    assert_eq!(
        scores.all("data-touchpoint").len(),
        2,
        "only scored touchpoints"
    );
}

/// RFC 3339 (UTC, whole seconds) of epoch milliseconds; days to civil date after H. Hinnant.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn canned_alerts() -> Value {
    let iso = |minutes_ago: i64| rfc3339(now_ms() - minutes_ago * MINUTE);
    let evaluation = json!({
        "enabled": true, "evaluated_at": iso(0), "window": "15m", "min_sessions": 50,
    });
    let alert = |touchpoint: &str, phase: &str, state: &str, rates: (f64, f64), sessions: u32| {
        json!({
            "touchpoint": touchpoint, "phase": phase, "state": state,
            "drop_off_rate": rates.0, "baseline_rate": rates.1, "sessions": sessions,
        })
    };
    let mut resolved = alert("checkout", "decision", "resolved", (0.2, 0.11), 90);
    resolved["active_since"] = json!(iso(300));
    resolved["fired_at"] = json!(iso(290));
    resolved["resolved_at"] = json!(iso(200));
    resolved["summary"] = json!("drop-off at checkout back to normal");
    let mut pending = alert("compare", "consideration", "pending", (0.3, 0.15), 120);
    pending["active_since"] = json!(iso(5));
    pending["fired_at"] = Value::Null;
    pending["resolved_at"] = Value::Null;
    pending["summary"] = json!("drop-off at compare rising");
    let mut firing = alert("cart", "decision", "firing", (0.41, 0.12), 312);
    firing["active_since"] = json!(iso(40));
    firing["fired_at"] = json!(iso(25));
    firing["resolved_at"] = Value::Null;
    firing["summary"] = json!("drop-off at cart is 3.4 × its baseline");
    // A phase's conversion falling: no touchpoint, conversion rates and journeys.
    let conversion = json!({
        "kind": "conversion", "touchpoint": null, "phase": "consideration", "state": "pending",
        "conversion": 0.25, "baseline_conversion": 0.4, "journeys": 240, "baseline_journeys": 260,
        "active_since": iso(3), "fired_at": null, "resolved_at": null,
        "summary": "conversion from consideration fell to 0.6 × its baseline",
    });
    // Listed resolved first: the dashboard orders them itself.
    json!({ "evaluation": evaluation, "alerts": [resolved, pending, conversion, firing] })
}

fn check_alerts(dom: &str) {
    let alerts = by_id(dom, "alerts");
    assert_eq!(alerts.attr("data-evaluation"), Some("enabled"));
    assert!(
        alerts
            .attr("class")
            .is_some_and(|c| c.contains("has-active")),
        "a firing alert marks the panel"
    );
    let active = by_id(dom, "alerts-active").all("data-alert-state");
    let order: Vec<(&str, &str, &str)> = active
        .iter()
        .map(|a| {
            (
                a.attr("data-alert-state").unwrap_or_default(),
                a.attr("data-alert-kind").unwrap_or_default(),
                a.attr("data-touchpoint").unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("firing", "drop_off", "cart"),
            ("pending", "drop_off", "compare"),
            ("pending", "conversion", "")
        ],
        "firing first"
    );
    // A conversion alert shows its phase's conversion, not a drop-off rate.
    let conversion = &active[2];
    assert!(conversion.text().contains("consideration conversion"));
    assert_eq!(conversion.field("conversion"), "25.0%");
    assert_eq!(conversion.field("baseline_conversion"), "40.0%");
    assert_eq!(conversion.field("journeys"), "240");
    assert_eq!(active[0].field("drop_off_rate"), "41.0%");
    assert_eq!(active[0].field("baseline_rate"), "12.0%");
    assert_eq!(active[0].field("sessions"), "312");
    assert!(active[0].text().contains("3.4 × its baseline"));
    let resolved = by_id(dom, "alerts-resolved");
    assert!(resolved.attr("hidden").is_none(), "resolved alerts listed");
    let muted = resolved.all("data-alert-state");
    assert_eq!(muted.len(), 1);
    assert_eq!(muted[0].attr("data-alert-state"), Some("resolved"));
    assert!(muted[0]
        .attr("class")
        .is_some_and(|c| c.contains("resolved")));
    let cart = by_id(dom, "touchpoints").find("data-touchpoint", "cart");
    assert!(
        cart.attr("class").is_some_and(|c| c.contains("alerting")),
        "the alerting touchpoint is marked in the table"
    );
}

#[test]
fn dashboard_asks_for_a_read_token_on_401() {
    let dir = temp_dir("dashboard-token");
    let service = start_service(&dir, r#"read_tokens = ["read-token-0123456789"]"#);
    let dom = dump_dom(
        &dir.join("chromium"),
        &format!("http://127.0.0.1:{}/", service.port),
    );
    let body = &elements(&dom, "data-state")[0];
    assert_eq!(body.attr("data-state"), Some("auth"));
    let form = by_id(&dom, "token-panel");
    assert!(form.attr("hidden").is_none(), "the token field is shown");
    assert!(
        form.text()
            .contains("needs `Authorization: Bearer <token>`"),
        "the prompt says why: {}",
        form.text()
    );
    let input = by_id(&dom, "token");
    assert_eq!(input.attr("type"), Some("password"));
    assert!(service.terminate(), "journeyd exits cleanly");
}

#[test]
fn rfc3339_formats_epoch_milliseconds() {
    assert_eq!(rfc3339(1_795_132_800_000), "2026-11-20T00:00:00Z");
    assert_eq!(rfc3339(951_782_399_999), "2000-02-28T23:59:59Z");
    assert_eq!(rfc3339(951_868_800_000), "2000-03-01T00:00:00Z");
    assert_eq!(thousands(1_234_567), "1,234,567");
    assert_eq!(thousands(999), "999");
}

// ---- segments, comparison, time to convert, moments of truth ------------------------------------

/// Two personas, one session per customer, minutes after a base four hours ago:
///
/// | customer | persona | min   | events                                             | ends     |
/// |----------|---------|-------|----------------------------------------------------|----------|
/// | p1       | pro     | 0–10  | ad (cpc) → product → add → /cart → checkout → order | goal     |
/// | p2       | pro     | 20–30 | home `/` → product (26) → /cart (30)                | drop-off |
/// | p3       | pro     | 40–48 | organic search → product (48)                       | drop-off |
/// | c1       | casual  | 60–61 | home `/` → /cart (skips consideration)              | drop-off |
/// | c2       | casual  | 70    | blog                                                | drop-off |
/// | c3       | casual  | 80–96 | home `/` → product (85) → add (95) → /cart (96)     | drop-off |
///
/// Time to convert (minutes from the journey's start): consideration p1 2, p2 6, p3 8, c1 1
/// (reached when it moves past it), c3 5; decision p1 4, p2 10, c1 1, c3 15; awareness 0 for all.
const SEGMENT_SCRIPT: &str = r#"
p1  0  web  page_view         {"url": "/lp/trail", "utm_medium": "cpc", "persona": "pro"}
p1  2  web  page_view         {"url": "/products/trail-runner"}
p1  4  web  add_to_cart       {}
p1  5  web  page_view         {"url": "/cart"}
p1  6  web  checkout_started  {}
p1 10  web  order_completed   {}
p2 20  web  page_view         {"url": "/", "persona": "pro"}
p2 26  web  page_view         {"url": "/products/hiking-boot"}
p2 30  web  page_view         {"url": "/cart"}
p3 40  web  page_view         {"url": "/", "utm_medium": "organic", "persona": "pro"}
p3 48  web  page_view         {"url": "/products/hiking-boot"}
c1 60  web  page_view         {"url": "/", "persona": "casual"}
c1 61  web  page_view         {"url": "/cart"}
c2 70  web  page_view         {"url": "/blog/ten-trails", "persona": "casual"}
c3 80  web  page_view         {"url": "/", "persona": "casual"}
c3 85  web  page_view         {"url": "/products/trail-runner"}
c3 95  web  add_to_cart       {}
c3 96  web  page_view         {"url": "/cart"}
"#;

fn segment_events(base: i64) -> Vec<Value> {
    SEGMENT_SCRIPT
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let minute: i64 = f[1].parse().expect("minutes are integers");
            let json = &line[line.find('{').unwrap_or(line.len())..];
            let attributes: Value = serde_json::from_str(json).expect("attributes are JSON");
            json!({
                "customer_id": f[0], "ts": base + minute * MINUTE, "source": f[2],
                "event": f[3], "attributes": attributes,
            })
        })
        .collect()
}

/// Per phase, reached by pro (A) and casual (B), and their step conversions (`None`: none).
const SEG_FUNNEL: [(&str, i64, i64); 5] = [
    ("awareness", 3, 3),
    ("consideration", 3, 2),
    ("decision", 2, 2),
    ("retention", 0, 0),
    ("advocacy", 0, 0),
];

/// Time to convert over every journey: phase, count, p50, p90, p99 in minutes (`rank =
/// ⌊q·(n−1)⌋` of the sorted samples, as the sketch answers within 1 %).
/// Phase, journeys, and (p50, p90, p99) in minutes when any journey reached it.
type TtcRow = (&'static str, u64, Option<(f64, f64, f64)>);

const TTC: [TtcRow; 5] = [
    ("awareness", 6, Some((0.0, 0.0, 0.0))),
    ("consideration", 5, Some((5.0, 6.0, 6.0))), // [1, 2, 5, 6, 8]
    ("decision", 4, Some((4.0, 10.0, 10.0))),    // [1, 4, 10, 15]
    ("retention", 0, None),
    ("advocacy", 0, None),
];

fn load_segments(port: u16) {
    let base = (now_ms() - 4 * 60 * MINUTE) / MINUTE * MINUTE;
    post(port, &segment_events(base));
    post(
        port,
        &[json!({ "customer_id": "c-zed", "ts": now_ms(), "source": "web", "event": "heartbeat" })],
    );
    // Every session closed and published: the casual cart's two drop-offs are the last.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = get_json(port, "/v1/touchpoints?segment=persona:casual");
        let cart = v.as_ref().and_then(|v| {
            v["touchpoints"]
                .as_array()?
                .iter()
                .find(|t| t["name"] == "cart")
                .cloned()
        });
        let ttc = get_json(port, "/v1/funnel")
            .map(|f| f["funnel"]["steps"][2]["time_to_convert"]["count"].clone());
        if cart.is_some_and(|c| c["sessions"] == 2 && c["drop_offs"] == 2) && ttc == Some(json!(4))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the casual sessions never closed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pp(d: f64) -> String {
    let sign = if d > 1e-12 {
        "+"
    } else if d < -1e-12 {
        "−"
    } else {
        "±"
    };
    format!("{sign}{:.1} pp", (100.0 * d).abs())
}

fn screenshot(dir: &Path, url: &str, name: &str) {
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts)
        .unwrap_or_else(|e| panic!("creating {}: {e}", artifacts.display()));
    let png = artifacts.join(name);
    let _ = std::fs::remove_file(&png);
    run_chromium(
        &dir.join(format!("chromium-{name}")),
        url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1400,2400",
        ],
    );
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("reading {}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000);
    eprintln!("screenshot: {}", png.display());
}

#[test]
fn dashboard_segments_comparison_and_time_to_convert() {
    let dir = temp_dir("dashboard-segments");
    let service = start_service(&dir, "");
    let port = service.port;
    load_segments(port);

    // All customers: the selectors list the segments, the time-to-convert panel all journeys.
    let dom = dump_dom(
        &dir.join("chromium-all"),
        &format!("http://127.0.0.1:{port}/"),
    );
    let body = &elements(&dom, "data-state")[0];
    assert_eq!(
        body.attr("data-state"),
        Some("ready"),
        "{}",
        by_id(&dom, "banner").text()
    );
    for id in ["segment", "compare"] {
        let options: Vec<String> = elements(by_id(&dom, id).inner, "value")
            .iter()
            .filter_map(|o| o.attr("value").map(str::to_string))
            .collect();
        assert_eq!(options, ["", "persona:casual", "persona:pro"], "#{id}");
    }
    assert!(by_id(&dom, "segment-label").attr("hidden").is_none());
    assert!(
        by_id(&dom, "compare-panel").attr("hidden").is_some(),
        "nothing to compare"
    );
    let ttc = by_id(&dom, "ttc");
    for (phase, count, quantiles) in TTC {
        let row = ttc.find("data-phase", phase);
        assert_eq!(
            row.field("ttc_count"),
            count.to_string(),
            "{phase}: journeys"
        );
        for (k, field) in ["ttc_p50", "ttc_p90", "ttc_p99"].into_iter().enumerate() {
            match quantiles {
                Some(q) => {
                    let want = [q.0, q.1, q.2][k] * MINUTE as f64;
                    let got: f64 = row.field_value(field).parse().unwrap_or(f64::NAN);
                    assert!(
                        (got - want).abs() <= want * 0.01 + 1e-9,
                        "{phase} {field}: {got} ms, want {want} ms within 1 %"
                    );
                    assert_ne!(row.field(field), "–", "{phase} {field} shown");
                }
                None => assert_eq!(row.field(field), "–", "{phase} {field}"),
            }
        }
    }
    // As the dashboard writes durations: 10 min, give or take the sketch's 1 % (6 s).
    let p90 = ttc.find("data-phase", "decision").field("ttc_p90");
    assert!(
        p90 == "10 min" || p90.starts_with("10 min ") || p90.starts_with("9 min 5"),
        "{p90}"
    );
    assert_eq!(ttc.find("data-phase", "awareness").field("ttc_p50"), "0 ms");

    // Persona `pro` against `casual`, from a shared link.
    let url =
        format!("http://127.0.0.1:{port}/#range=24h&segment=persona:pro&compare=persona:casual");
    let dom = dump_dom(&dir.join("chromium-compare"), &url);
    let body = &elements(&dom, "data-state")[0];
    assert_eq!(
        body.attr("data-state"),
        Some("ready"),
        "{}",
        by_id(&dom, "banner").text()
    );
    assert_eq!(body.attr("data-segment"), Some("persona:pro"));
    let chosen = |id: &str| {
        elements(by_id(&dom, id).inner, "value")
            .into_iter()
            .filter(|o| o.attr("selected").is_some())
            .filter_map(|o| o.attr("value").map(str::to_string))
            .collect::<Vec<_>>()
    };
    assert_eq!(chosen("segment"), ["persona:pro"]);
    assert_eq!(chosen("compare"), ["persona:casual"]);
    assert_eq!(by_id(&dom, "segment-chip").text(), "persona: pro");

    // The map, funnel and touchpoints show persona `pro` only.
    let map = by_id(&dom, "journey-map");
    for (phase, a, _) in SEG_FUNNEL {
        let head = map.find("data-map-head", phase);
        assert_eq!(head.field_value("reached"), a.to_string(), "map: {phase}");
        let row = by_id(&dom, "funnel").find("data-phase", phase);
        assert_eq!(row.field("reached"), a.to_string(), "funnel: {phase}");
    }
    let card = map.find("data-map-touchpoint", "cart");
    assert_eq!(card.field("visits"), "2", "p1 and p2");
    assert_eq!(card.field("drop_off_rate"), "50.0%", "p2 of p1, p2");
    assert_eq!(
        map.find("data-map-touchpoint", "product_page")
            .field("visits"),
        "3"
    );
    assert_eq!(
        map.find("data-map-touchpoint", "blog_post")
            .attr("data-idle"),
        Some("true")
    );
    let kpis = by_id(&dom, "kpis");
    assert_eq!(
        kpis.find("data-field", "journeys").attr("data-value"),
        Some("3")
    );
    let tps = by_id(&dom, "touchpoints").find("data-touchpoint", "product_page");
    assert_eq!(tps.field("drop_offs"), "1", "p3 left there");
    // Sparklines follow the segment too: pro's three product-page sessions.
    let spark = tps.find("data-sparkline", "product_page");
    assert_eq!(spark.attr("data-sessions-total"), Some("3"));

    // The comparison: phases.
    let panel = by_id(&dom, "compare-panel");
    assert!(panel.attr("hidden").is_none(), "the comparison is shown");
    assert!(
        by_id(&dom, "compare-names")
            .text()
            .contains("A: persona: pro (3 journeys) · B: persona: casual (3 journeys)"),
        "{}",
        by_id(&dom, "compare-names").text()
    );
    let phases = by_id(&dom, "compare-phases");
    for (k, (phase, a, b)) in SEG_FUNNEL.into_iter().enumerate() {
        let row = phases.find("data-phase", phase);
        assert_eq!(row.field("a_reached"), a.to_string(), "{phase} A");
        assert_eq!(row.field("b_reached"), b.to_string(), "{phase} B");
        let (fa, fb) = (a as f64 / 3.0, b as f64 / 3.0);
        assert_eq!(row.field("a_from_start"), pct(fa), "{phase}");
        assert_eq!(row.field("b_from_start"), pct(fb), "{phase}");
        assert_eq!(row.field("from_start_diff"), pp(fb - fa), "{phase}");
        let next = SEG_FUNNEL.get(k + 1);
        let conv = |n: i64, next: Option<i64>| next.filter(|_| n > 0).map(|m| m as f64 / n as f64);
        let (ca, cb) = (conv(a, next.map(|x| x.1)), conv(b, next.map(|x| x.2)));
        check_a_b_diff(&row, "conversion", (ca, cb), phase);
    }
    // Highlighted: 5 points or more, green where B does better.
    let highlight = |table: &Element, key: &str, name: &str, field: &str| {
        table
            .find(key, name)
            .find("data-field", field)
            .attr("data-highlight")
            .map(str::to_string)
    };
    assert_eq!(
        highlight(&phases, "data-phase", "consideration", "from_start_diff").as_deref(),
        Some("worse"),
        "66.7 % vs 100 %"
    );
    assert_eq!(
        highlight(&phases, "data-phase", "awareness", "conversion_diff").as_deref(),
        Some("worse"),
        "2/3 vs 3/3"
    );
    assert_eq!(
        highlight(&phases, "data-phase", "consideration", "conversion_diff").as_deref(),
        Some("better"),
        "2/2 vs 2/3"
    );
    assert_eq!(
        highlight(&phases, "data-phase", "decision", "from_start_diff"),
        None,
        "2/3 both"
    );

    // The comparison: touchpoint drop-off rates (sessions, drop-offs per persona).
    let tps = by_id(&dom, "compare-touchpoints");
    let all = tps.all("data-touchpoint");
    let rows = values(&all, "data-touchpoint");
    assert_eq!(
        rows,
        [
            "ad_click",
            "search_visit",
            "blog_post",
            "landing_page",
            "product_page",
            "add_to_cart",
            "cart",
            "checkout",
            "order_confirmed"
        ],
        "touchpoints with sessions in either segment, in rules order"
    );
    // (touchpoint, A sessions, A drop-offs, B sessions, B drop-offs)
    for (name, sa, da, sb, db) in [
        ("cart", 2, 1, 2, 2),
        ("product_page", 3, 1, 1, 0),
        ("landing_page", 1, 0, 2, 0),
        ("blog_post", 0, 0, 1, 1),
    ] {
        let row = tps.find("data-touchpoint", name);
        assert_eq!(row.field("a_sessions"), sa.to_string(), "{name}");
        assert_eq!(row.field("b_sessions"), sb.to_string(), "{name}");
        let rate = |d: i32, s: i32| (s > 0).then(|| d as f64 / s as f64);
        let (ra, rb) = (rate(da, sa), rate(db, sb));
        check_a_b_diff(&row, "drop_off", (ra, rb), name);
    }
    assert_eq!(
        highlight(&tps, "data-touchpoint", "cart", "drop_off_diff").as_deref(),
        Some("worse")
    );
    assert_eq!(
        highlight(&tps, "data-touchpoint", "product_page", "drop_off_diff").as_deref(),
        Some("better")
    );
    assert_eq!(
        highlight(&tps, "data-touchpoint", "landing_page", "drop_off_diff"),
        None
    );
    screenshot(&dir, &url, "dashboard-segments.png");

    // Moments of truth in the shape of `/v1/moments`, answered by a proxy.
    let proxy = AlertsProxy::answering(port, "/v1/moments", canned_moments());
    let url = format!("http://127.0.0.1:{}/#segment=persona:pro", proxy.port);
    let dom = dump_dom(&dir.join("chromium-moments"), &url);
    check_moments(&dom);
    screenshot(&dir, &url, "dashboard-moments.png");
    drop(proxy);
    assert!(service.terminate(), "journeyd exits cleanly");
}

fn canned_moments() -> Value {
    json!({
        "goal": "decision", "journeys": 1200, "converted": 300, "conversion": 0.25,
        "moments": [
            {
                "touchpoint": "compare", "phase": "consideration", "moment_of_truth": false,
                "touched": { "journeys": 200, "converted": 120, "conversion": 0.6 },
                "not_touched": { "journeys": 1000, "converted": 180, "conversion": 0.18 },
                "lift": 3.3333, "odds_ratio": 6.8333, "ci95": [4.87, 9.59], "p_value": 1e-30,
                "significant": true
            },
            {
                "touchpoint": "checkout", "phase": "decision", "moment_of_truth": true,
                "touched": { "journeys": 50, "converted": 14, "conversion": 0.28 },
                "not_touched": { "journeys": 1150, "converted": 286, "conversion": 0.2487 },
                "lift": 1.1259, "odds_ratio": 1.1752, "ci95": [0.62, 2.22], "p_value": 0.617,
                "significant": false
            },
            {
                "touchpoint": "referral", "phase": "advocacy", "moment_of_truth": false,
                "touched": { "journeys": 0, "converted": 0, "conversion": null },
                "not_touched": { "journeys": 1200, "converted": 300, "conversion": 0.25 },
                "lift": null, "odds_ratio": null, "ci95": null, "p_value": null,
                "significant": null
            },
            {
                "touchpoint": "review", "phase": "advocacy", "moment_of_truth": false,
                "touched": { "journeys": 0, "converted": 0, "conversion": null },
                "not_touched": { "journeys": 1200, "converted": 300, "conversion": 0.25 },
                "lift": null, "odds_ratio": null, "ci95": null, "p_value": null,
                "significant": false, "tracked": false
            }
        ]
    })
}

fn check_moments(dom: &str) {
    let body = &elements(dom, "data-state")[0];
    assert_eq!(
        body.attr("data-state"),
        Some("ready"),
        "{}",
        by_id(dom, "banner").text()
    );
    let panel = by_id(dom, "moments-panel");
    assert!(
        panel.attr("hidden").is_none(),
        "a 200 from /v1/moments shows the panel"
    );
    assert_eq!(by_id(dom, "moments-goal").text(), "reaching decision");
    assert_eq!(
        by_id(dom, "moments-summary").text(),
        "1,200 journeys, 300 converted (25.0%)."
    );
    let rows = by_id(dom, "moments").all("data-rank");
    let order = values(&rows, "data-touchpoint");
    assert_eq!(
        order,
        ["compare", "checkout", "referral", "review"],
        "the API's ranking"
    );
    let compare = &rows[0];
    assert_eq!(compare.attr("data-significant"), Some("true"));
    assert!(
        compare.attr("data-moment-of-truth").is_none(),
        "not flagged in the rules"
    );
    assert_eq!(compare.field("touched_journeys"), "200");
    assert_eq!(compare.field("touched_conversion"), "60.0%");
    assert_eq!(compare.field("not_touched_journeys"), "1,000");
    assert_eq!(compare.field("not_touched_conversion"), "18.0%");
    assert_eq!(compare.field("lift"), "3.33");
    assert_eq!(compare.field("odds_ratio"), "6.83 (4.87–9.59)");
    assert_eq!(compare.field("p_value"), "< 0.001");
    assert_eq!(compare.field("significant"), "significant");
    // checkout: flagged in the rules (★), not significant in the data.
    let checkout = &rows[1];
    assert_eq!(checkout.attr("data-moment-of-truth"), Some("true"));
    assert!(checkout.text().contains("★ checkout"));
    assert_eq!(checkout.field("p_value"), "0.617");
    assert_eq!(checkout.field("significant"), "not significant");
    // Nulls are dashes, not zeros.
    let referral = &rows[2];
    for field in ["touched_conversion", "lift", "p_value", "significant"] {
        assert_eq!(referral.field(field), "–", "referral {field}");
    }
    assert_eq!(referral.field("odds_ratio"), "–");
    // A touchpoint some task could not track says so instead of "not significant".
    assert_eq!(rows[3].field("significant"), "not tracked");
}

/// A comparison row's two shares (`a_<field>`, `b_<field>`; for drop-off `*_drop_off_rate`)
/// and their difference in points (`<field>_diff`), "–" where a share is undefined.
fn check_a_b_diff(row: &Element, field: &str, (a, b): (Option<f64>, Option<f64>), label: &str) {
    let share = if field == "drop_off" {
        "drop_off_rate"
    } else {
        field
    };
    let shown = |v: Option<f64>| v.map_or("–".into(), pct);
    assert_eq!(row.field(&format!("a_{share}")), shown(a), "{label}");
    assert_eq!(row.field(&format!("b_{share}")), shown(b), "{label}");
    let diff = match (a, b) {
        (Some(x), Some(y)) => pp(y - x),
        _ => "–".to_string(),
    };
    assert_eq!(row.field(&format!("{field}_diff")), diff, "{label}");
}

/// The `attr` values of `els`, in document order (elements without it are skipped).
fn values<'e>(els: &'e [Element<'_>], attr: &str) -> Vec<&'e str> {
    els.iter().filter_map(|e| e.attr(attr)).collect()
}
