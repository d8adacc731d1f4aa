//! Tokens, scopes, plug prefixes, JWTs, limits, TLS and configuration, against a real
//! server that checks tokens.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;

use crate::support::{Server, agent, create_token, lp_line, python};

const T0: i64 = 1_700_000_000_000_000_000;
const S: i64 = 1_000_000_000;

/// An HTTP answer: status, body, and the headers the tests look at.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
    retry_after: Option<String>,
    www_authenticate: Option<String>,
}

fn call(server: &Server, method: &str, path: &str, token: Option<&str>, body: &str) -> Answer {
    let mut req = agent().request(method, &format!("{}{path}", server.url));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let r = if body.is_empty() && method == "GET" {
        req.call()
    } else {
        let ct = if body.starts_with('{') || body.starts_with('[') {
            "application/json"
        } else {
            "text/plain"
        };
        req.set("Content-Type", ct).send_string(body)
    };
    let resp = match r {
        Ok(resp) | Err(ureq::Error::Status(_, resp)) => resp,
        Err(e) => panic!("{method} {path}: {e}"),
    };
    Answer {
        status: resp.status(),
        retry_after: resp.header("Retry-After").map(str::to_owned),
        www_authenticate: resp.header("WWW-Authenticate").map(str::to_owned),
        body: resp.into_string().unwrap_or_default(),
    }
}

fn get_as(server: &Server, token: &str, path: &str) -> Answer {
    call(server, "GET", path, Some(token), "")
}

fn sql_as(server: &Server, token: &str, sql: &str) -> Vec<Value> {
    let a = call(
        server,
        "POST",
        "/api/v1/query",
        Some(token),
        &json!({ "sql": sql }).to_string(),
    );
    assert_eq!(a.status, 200, "{sql}: {}", a.body);
    serde_json::from_str(&a.body).unwrap()
}

/// Writes two minutes of readings of each plug and persists them (so rollups exist).
fn load(server: &Server, plugs: &[&str]) {
    let mut body = String::new();
    for p in plugs {
        for i in 0..120 {
            body.push_str(&lp_line(p, T0 + i * S, 100.0 + i as f64));
            body.push('\n');
        }
    }
    assert_eq!(server.write_lp(&body).0, 204);
    let (status, out) = server.post("/api/v1/admin/persist", "application/json", b"");
    assert_eq!(status, 200, "{out}");
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Need {
    Nothing,
    AnyToken,
    Read,
    /// Read, for every plug (fleet-wide).
    Fleet,
    Write,
    Admin,
}

#[test]
fn every_route_and_kind_of_token_get_the_status_their_scope_and_plugs_allow() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let read = create_token(&data, &["--scope", "read"]);
    let write = create_token(&data, &["--scope", "write"]);
    let house_read = create_token(&data, &["--scope", "read", "--devices", "house1-"]);
    let house_write = create_token(&data, &["--scope", "write", "--devices", "house1-"]);
    let expiring = create_token(&data, &["--scope", "admin", "--expires-in", "1s"]);
    let server = Server::start_with_auth(&data, &[]);
    let admin = server.token.clone().unwrap();
    load(&server, &["house1-a", "house2-a"]);

    // A token created while the server runs works within a second; one revoked stops.
    let late = create_token(&data, &["--scope", "read"]);
    let revoked = create_token(&data, &["--scope", "admin"]);
    let revoked_id = revoked.split('_').nth(1).unwrap().to_owned();
    let out = Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .args(["token", "revoke", "--data-dir"])
        .arg(&data)
        .arg(&revoked_id)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(get_as(&server, &late, "/api/v1/latest").status, 200);
    assert_eq!(get_as(&server, &revoked, "/api/v1/latest").status, 401);
    // By now the expiring token has expired.
    std::thread::sleep(Duration::from_millis(200));

    let window = format!(
        "from={}&to={}",
        "2023-11-14T22:13:00Z", "2023-11-14T22:17:00Z"
    );
    let lp = |plug: &str| lp_line(plug, T0 + 500 * S, 1.0);
    let json_reading = |plug: &str| {
        json!([{"device_id": plug, "ts": T0 / S + 600, "voltage": 230.0, "current": 0.1, "power": 1.0}]).to_string()
    };
    let query = json!({"sql": "SELECT count(*) AS n FROM readings"}).to_string();
    let series = format!("/api/v1/series?device=house1-a&{window}&step=1m");
    let export = format!("/api/v1/export?{window}&format=csv");
    let routes: Vec<(&str, String, String, Need)> = vec![
        ("GET", "/health".into(), String::new(), Need::Nothing),
        ("GET", "/ready".into(), String::new(), Need::AnyToken),
        (
            "GET",
            "/api/v1/openapi.json".into(),
            String::new(),
            Need::AnyToken,
        ),
        ("POST", "/api/v2/write".into(), lp("house1-a"), Need::Write),
        ("POST", "/write".into(), lp("house1-a"), Need::Write),
        (
            "POST",
            "/api/v1/readings".into(),
            json_reading("house1-a"),
            Need::Write,
        ),
        ("POST", "/api/v1/query".into(), query, Need::Read),
        ("GET", series, String::new(), Need::Read),
        ("GET", export, String::new(), Need::Read),
        ("GET", "/api/v1/latest".into(), String::new(), Need::Read),
        ("GET", "/api/v1/devices".into(), String::new(), Need::Read),
        ("GET", "/metrics".into(), String::new(), Need::Fleet),
        (
            "POST",
            "/api/v1/admin/persist".into(),
            String::new(),
            Need::Admin,
        ),
        (
            "POST",
            "/api/v1/admin/compact".into(),
            String::new(),
            Need::Admin,
        ),
        (
            "POST",
            "/api/v1/admin/expire".into(),
            String::new(),
            Need::Admin,
        ),
        (
            "GET",
            "/api/v1/admin/tokens".into(),
            String::new(),
            Need::Admin,
        ),
    ];
    let wrong = format!("wdb_{}_{}", "0".repeat(12), "0".repeat(48));
    // (name, token, scope, limited to some plugs)
    let kinds: Vec<(&str, Option<&str>, Option<Need>, bool)> = vec![
        ("none", None, None, false),
        ("wrong", Some(&wrong), None, false),
        ("expired", Some(&expiring), None, false),
        ("revoked", Some(&revoked), None, false),
        ("read", Some(&read), Some(Need::Read), false),
        ("write", Some(&write), Some(Need::Write), false),
        ("admin", Some(&admin), Some(Need::Admin), false),
        ("read house1-", Some(&house_read), Some(Need::Read), true),
        ("write house1-", Some(&house_write), Some(Need::Write), true),
    ];
    for (kind, token, scope, limited) in &kinds {
        for (method, path, body, need) in &routes {
            let a = call(&server, method, path, *token, body);
            let allowed = match (need, scope) {
                (Need::Nothing, _) => true,
                (_, None) => false,
                (Need::AnyToken, Some(_)) => true,
                (_, Some(Need::Admin)) => true,
                (Need::Fleet, Some(Need::Read)) => !limited,
                (n, Some(s)) => n == s,
            };
            let want: &[u16] = if allowed {
                &[200, 204]
            } else if scope.is_none() {
                &[401]
            } else {
                &[403]
            };
            assert!(
                want.contains(&a.status),
                "{kind} token, {method} {path}: want {want:?}, got {} {}",
                a.status,
                a.body
            );
            if a.status == 401 {
                assert!(
                    a.www_authenticate.is_some(),
                    "{kind} {path}: no WWW-Authenticate"
                );
                let err: Value = serde_json::from_str(&a.body).unwrap();
                assert!(err["error"].is_string());
            }
        }
    }
    // The live WebSocket, by kind of token.
    for (kind, token, scope, _) in &kinds {
        let url = format!("{}/api/v1/live", server.url.replace("http://", "ws://"));
        let mut req = url.as_str().into_client_request().unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        let status = match tungstenite::connect(req) {
            Ok((_, resp)) => resp.status().as_u16(),
            Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{kind}: {e}"),
        };
        let want = match scope {
            None => 401,
            Some(Need::Read | Need::Admin) => 101,
            Some(_) => 403,
        };
        assert_eq!(status, want, "{kind} token, live");
    }

    // Writes of other plugs by a plug-limited token are refused whole.
    let a = call(
        &server,
        "POST",
        "/api/v2/write",
        Some(&house_write),
        &format!("{}\n{}\n", lp("house1-z"), lp("house2-z")),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("house2-z"), "{}", a.body);
    let rows = server.sql("SELECT count(*) AS n FROM readings WHERE device_id LIKE '%-z'");
    assert_eq!(rows[0]["n"], 0);

    // No token is written to the data directory or the log.
    let mut texts = vec![std::fs::read_to_string(data.with_extension("log")).unwrap()];
    for e in walk(&data) {
        texts.push(String::from_utf8_lossy(&std::fs::read(e).unwrap()).into_owned());
    }
    for t in [
        &read,
        &write,
        &house_read,
        &house_write,
        &admin,
        &late,
        &revoked,
        &expiring,
    ] {
        let secret = t.rsplit('_').next().unwrap();
        assert!(
            texts.iter().all(|x| !x.contains(secret)),
            "a token is stored or logged in plain text"
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn subscribe(
    server: &Server,
    token: &str,
    query: &str,
) -> tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>> {
    let url = format!(
        "{}/api/v1/live?{query}",
        server.url.replace("http://", "ws://")
    );
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, resp) = tungstenite::connect(req).unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    }
    ws
}

#[test]
fn a_plug_limited_token_never_sees_another_plugs_data_in_any_route() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let house = create_token(&data, &["--scope", "read", "--devices", "house1-"]);
    let server = Server::start_with_auth(&data, &[]);
    load(&server, &["house1-a", "house1-b", "house2-a", "house10-a"]);
    let mine: BTreeSet<&str> = ["house1-a", "house1-b"].into();
    let ids = |rows: &[Value]| -> BTreeSet<String> {
        rows.iter()
            .map(|r| r["device_id"].as_str().unwrap().to_owned())
            .collect()
    };

    // SQL, over every table, however it is asked.
    for sql in [
        "SELECT DISTINCT device_id FROM readings",
        "SELECT DISTINCT device_id FROM readings_1m",
        "SELECT DISTINCT device_id FROM readings_1h",
        "SELECT DISTINCT device_id FROM readings_1d",
        "SELECT DISTINCT r.device_id FROM readings r JOIN readings_1d d ON true",
    ] {
        let got = ids(&sql_as(&server, &house, sql));
        assert_eq!(got, mine.iter().map(|s| s.to_string()).collect(), "{sql}");
    }
    let sql = "SELECT device_id FROM readings WHERE device_id IN ('house2-a', 'house10-a', 'house1-a') GROUP BY 1";
    assert_eq!(
        ids(&sql_as(&server, &house, sql)),
        BTreeSet::from(["house1-a".to_owned()])
    );
    let n = sql_as(&server, &house, "SELECT count(*) AS n FROM readings");
    assert_eq!(n[0]["n"], 240);

    // Series: its plugs only.
    let window = "from=2023-11-14T22:13:00Z&to=2023-11-14T22:17:00Z&step=1m";
    let a = get_as(
        &server,
        &house,
        &format!("/api/v1/series?device=house1-a&{window}"),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let a = get_as(
        &server,
        &house,
        &format!("/api/v1/series?device=house1-a,house2-a&{window}"),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("house2-a"));

    // Latest and devices: filtered, or 403 when another plug is named.
    for route in ["/api/v1/latest", "/api/v1/devices"] {
        let a = get_as(&server, &house, route);
        assert_eq!(a.status, 200);
        let rows: Vec<Value> = serde_json::from_str(&a.body).unwrap();
        assert_eq!(
            ids(&rows),
            mine.iter().map(|s| s.to_string()).collect(),
            "{route}"
        );
        let a = get_as(&server, &house, &format!("{route}?device=house10-a"));
        assert_eq!(a.status, 403, "{route}: {}", a.body);
        let a = get_as(&server, &house, &format!("{route}?prefix=house"));
        let rows: Vec<Value> = serde_json::from_str(&a.body).unwrap();
        assert_eq!(rows.len(), 2, "{route}?prefix=house");
    }

    // Exports of every resolution.
    for res in ["raw", "1m", "1h", "1d"] {
        let a = get_as(
            &server,
            &house,
            &format!(
                "/api/v1/export?from=2023-11-14T00:00:00Z&to=2023-11-16T00:00:00Z&resolution={res}&format=csv"
            ),
        );
        assert_eq!(a.status, 200, "{}", a.body);
        let plugs: BTreeSet<&str> = a
            .body
            .lines()
            .skip(1)
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(plugs, mine, "export {res}");
    }
    let a = get_as(
        &server,
        &house,
        "/api/v1/export?from=2023-11-14T00:00:00Z&device=house2-a&format=csv",
    );
    assert_eq!(a.status, 403);

    // Live: readings of other plugs never arrive.
    let mut ws = subscribe(&server, &house, "");
    let mut body = String::new();
    for (i, p) in ["house2-a", "house10-a", "house1-b"].iter().enumerate() {
        body.push_str(&lp_line(p, T0 + (1000 + i as i64) * S, 5.0));
        body.push('\n');
    }
    assert_eq!(server.write_lp(&body).0, 204);
    let msg = loop {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => {
                break serde_json::from_str::<Value>(t.as_str()).unwrap();
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let got: Vec<&str> = msg
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ["house1-b"]);
    let url = format!(
        "{}/api/v1/live?device=house2-a",
        server.url.replace("http://", "ws://")
    );
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {house}").parse().unwrap());
    match tungstenite::connect(req) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        other => panic!(
            "subscribing to another plug: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
}

#[test]
fn tokens_are_managed_by_the_admin_routes_and_listed_without_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with_auth(&data, &[]);
    let admin = server.token.clone().unwrap();
    let body = json!({"name": "dashboard", "scopes": ["read"], "devices": ["house1-"], "expires_in": "30d"});
    let a = call(
        &server,
        "POST",
        "/api/v1/admin/tokens",
        Some(&admin),
        &body.to_string(),
    );
    assert_eq!(a.status, 201, "{}", a.body);
    let created: Value = serde_json::from_str(&a.body).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert_eq!(created["scopes"], json!(["read"]));
    assert_eq!(created["devices"], json!(["house1-"]));
    assert!(created["expires"].is_string());
    // Usable at once.
    assert_eq!(get_as(&server, &token, "/api/v1/latest").status, 200);
    // Listed (here and by the CLI) without any secret.
    let a = get_as(&server, &admin, "/api/v1/admin/tokens");
    assert!(
        !a.body.contains(&token) && a.body.contains("dashboard"),
        "{}",
        a.body
    );
    let list: Value = serde_json::from_str(&a.body).unwrap();
    assert_eq!(list["tokens"].as_array().unwrap().len(), 2);
    let out = Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .args(["token", "list", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli, list);
    // Bad requests name the field.
    for (body, field) in [
        (json!({"scopes": ["owner"]}), "scopes"),
        (json!({"scopes": ["admin"], "devices": ["x"]}), "devices"),
        (
            json!({"scopes": ["read"], "expires_in": "soon"}),
            "expires_in",
        ),
    ] {
        let a = call(
            &server,
            "POST",
            "/api/v1/admin/tokens",
            Some(&admin),
            &body.to_string(),
        );
        assert_eq!(a.status, 400, "{body}: {}", a.body);
        assert!(a.body.contains(field), "{}", a.body);
    }
    // Revoked at once.
    let id = created["id"].as_str().unwrap();
    let a = call(
        &server,
        "DELETE",
        &format!("/api/v1/admin/tokens/{id}"),
        Some(&admin),
        "",
    );
    assert_eq!(a.status, 204, "{}", a.body);
    assert_eq!(get_as(&server, &token, "/api/v1/latest").status, 401);
    let a = call(
        &server,
        "DELETE",
        &format!("/api/v1/admin/tokens/{id}"),
        Some(&admin),
        "",
    );
    assert_eq!(a.status, 404);
}

#[test]
fn limits_answer_413_429_and_422() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with_auth(
        &data,
        &[
            "--max-body-bytes",
            "1000",
            "--rate-limit-rps",
            "5",
            "--max-result-rows",
            "5",
        ],
    );
    let admin = server.token.clone().unwrap();
    let big: String = (0..40)
        .map(|i| lp_line("p", T0 + i * S, 1.0) + "\n")
        .collect();
    let a = call(&server, "POST", "/api/v2/write", Some(&admin), &big);
    assert_eq!(a.status, 413, "{}", a.body);
    let big_sql = json!({"sql": format!("SELECT 1 -- {}", "x".repeat(2000))}).to_string();
    let a = call(&server, "POST", "/api/v1/query", Some(&admin), &big_sql);
    assert_eq!(a.status, 413, "{}", a.body);

    let a = call(
        &server,
        "POST",
        "/api/v1/query",
        Some(&admin),
        &json!({"sql": "SELECT * FROM generate_series(1, 10)"}).to_string(),
    );
    assert_eq!(a.status, 422, "{}", a.body);
    assert!(a.body.contains("--max-result-rows"), "{}", a.body);

    // The burst is 5 requests; within the same second the next ones are refused.
    std::thread::sleep(Duration::from_secs(2));
    let statuses: Vec<Answer> = (0..8)
        .map(|_| get_as(&server, &admin, "/api/v1/latest"))
        .collect();
    let limited: Vec<&Answer> = statuses.iter().filter(|a| a.status == 429).collect();
    assert!(
        !limited.is_empty(),
        "no 429 in {:?}",
        statuses.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert!(statuses[..5].iter().all(|a| a.status == 200));
    let retry: u64 = limited[0].retry_after.as_deref().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Another token has its own budget; after a while this one works again.
    let other = create_token(&data, &["--scope", "read"]);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get_as(&server, &other, "/api/v1/latest").status, 200);
    assert_eq!(get_as(&server, &admin, "/api/v1/latest").status, 200);
}

#[test]
fn too_many_queries_at_once_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &["--max-concurrent-queries", "1"]);
    let url = server.url.clone();
    // A query that runs for a while holds the only slot.
    let slow = std::thread::spawn(move || {
        let body =
            json!({"sql": "SELECT count(*) FROM generate_series(1, 2000000000)"}).to_string();
        let _ = agent()
            .post(&format!("{url}/api/v1/query"))
            .set("Content-Type", "application/json")
            .send_string(&body);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = None;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let (status, body) = server.query("SELECT 1 AS x", "json");
        if status == 429 {
            seen = Some(body);
            break;
        }
    }
    let body = seen.expect("no 429 while the slow query ran");
    assert!(body.contains("queries are running"), "{body}");
    drop(server);
    let _ = slow.join();
}

/// A self-signed certificate for 127.0.0.1 made by openssl: (cert, key).
fn certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (installed by scripts/test)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

#[test]
fn https_serves_a_real_client_that_trusts_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let server = Server::start_with_auth(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let token = server.token.clone().unwrap();
    let script = r#"
import json, os, ssl, urllib.request, urllib.error
url, token, ca = os.environ["URL"], os.environ["TOKEN"], os.environ["CA"]
ctx = ssl.create_default_context(cafile=ca)
body = b"power_metrics,device_id=tls-1 voltage=230,current=1,power=230 1700000000000000000"
req = urllib.request.Request(url + "/api/v2/write", data=body, headers={"Authorization": "Bearer " + token})
print(urllib.request.urlopen(req, context=ctx).status)
q = json.dumps({"sql": "SELECT device_id, power FROM readings"}).encode()
req = urllib.request.Request(url + "/api/v1/query", data=q, headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
print(json.loads(urllib.request.urlopen(req, context=ctx).read()))
try:
    urllib.request.urlopen(url + "/health", context=ssl.create_default_context())
    print("untrusted certificate accepted")
except urllib.error.URLError as e:
    print("refused without the CA:", isinstance(e.reason, ssl.SSLCertVerificationError))
"#;
    let out = python(
        script,
        &[
            ("URL", &server.url),
            ("TOKEN", &token),
            ("CA", cert.to_str().unwrap()),
        ],
    );
    assert_eq!(
        out,
        [
            "204",
            "[{'device_id': 'tls-1', 'power': 230.0}]",
            "refused without the CA: True"
        ]
    );
    // Plain HTTP on the TLS port gets no answer.
    let plain = server.url.replace("https://", "http://");
    assert!(agent().get(&format!("{plain}/health")).call().is_err());
}

/// `wattdb config ARGS` with `env`: its stdout, or its stderr if it failed.
fn wattdb_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .arg("config")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = if out.status.success() {
        out.stdout
    } else {
        out.stderr
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[test]
fn settings_come_from_flags_then_environment_then_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wattdb.toml");
    std::fs::write(
        &file,
        "retention-raw = \"14d\"\nquery_timeout_s = 12\nmax-result-rows = 7\nno-mqtt = true\n\n[mqtt]\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let (ok, out) = wattdb_config(
        &["--config", f, "--query-timeout-s", "5"],
        &[
            ("WATTDB_MAX_RESULT_ROWS", "9"),
            ("WATTDB_PERSIST_INTERVAL_S", "33"),
        ],
    );
    assert!(ok, "{out}");
    let line = |k: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{k} = ")))
            .unwrap_or_else(|| panic!("{k} missing from\n{out}"))
            .to_owned()
    };
    assert!(line("retention-raw").starts_with(&format!("retention-raw = \"14d\"  # config {f}")));
    assert!(line("query-timeout-s").starts_with("query-timeout-s = \"5\"  # flag"));
    assert!(
        line("max-result-rows")
            .starts_with("max-result-rows = \"9\"  # env WATTDB_MAX_RESULT_ROWS")
    );
    assert!(line("persist-interval-s").contains("\"33\"  # env"));
    assert!(line("no-mqtt").starts_with("no-mqtt = true"));
    assert!(line("mqtt-password").contains("********") && !out.contains("hunter2"));
    assert!(line("retention-1m").starts_with("retention-1m = \"30d\"  # default"));

    // Bad settings stop the start, named.
    std::fs::write(&file, "retention-raw = \"a week\"\n").unwrap();
    let (ok, err) = wattdb_config(&["--config", f], &[]);
    assert!(!ok && err.contains("--retention-raw"), "{err}");
    std::fs::write(&file, "retention_row = \"7d\"\n").unwrap();
    let (ok, err) = wattdb_config(&["--config", f], &[]);
    assert!(
        !ok && err.contains("unknown setting \"retention-row\""),
        "{err}"
    );
    let (ok, err) = wattdb_config(&[], &[("WATTDB_QUERY_TIMEOUT_S", "soon")]);
    assert!(!ok && err.contains("--query-timeout-s"), "{err}");
    // serve reads the same file.
    std::fs::write(
        &file,
        "without-auth = true\nhttp-addr = \"127.0.0.1:0\"\nno-mqtt = true\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .args(["serve", "--config", f, "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("wattdb listening on http://127.0.0.1:"),
        "{line}"
    );
}

#[test]
fn a_first_start_without_tokens_says_how_to_create_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wattdb"))
        .args([
            "serve",
            "--no-mqtt",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("wattdb listening on ")
        .unwrap()
        .to_owned();
    let (status, _) = crate::support::response(agent().get(&format!("{url}/api/v1/latest")).call());
    assert_eq!(status, 401);
    let (status, _) = crate::support::response(agent().get(&format!("{url}/health")).call());
    assert_eq!(status, 200);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("wattdb token create --data-dir"), "{log}");
}

/// Signs JWTs with PyJWT: claims JSON and settings in, token out.
fn jwt(key: &Path, alg: &str, header: Value, claims: Value) -> String {
    // PyJWT refuses to use a PEM key as an HMAC secret, so HS256 is signed by hand (as
    // an attacker would).
    let script = r#"
import base64, hashlib, hmac, json, os, jwt
key = open(os.environ["KEY"], "rb").read()
claims, header = json.loads(os.environ["CLAIMS"]), json.loads(os.environ["HEADER"])
if os.environ["ALG"] == "HS256":
    b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=")
    signed = b(json.dumps({"alg": "HS256", "typ": "JWT", **header}).encode()) + b"." + b(json.dumps(claims).encode())
    print((signed + b"." + b(hmac.new(key, signed, hashlib.sha256).digest())).decode())
else:
    print(jwt.encode(claims, key, algorithm=os.environ["ALG"], headers=header))
"#;
    python(
        script,
        &[
            ("KEY", key.to_str().unwrap()),
            ("ALG", alg),
            ("CLAIMS", &claims.to_string()),
            ("HEADER", &header.to_string()),
        ],
    )
    .remove(0)
}

fn b64(v: &Value) -> String {
    python(
        "import base64, os\nprint(base64.urlsafe_b64encode(os.environ['V'].encode()).decode().rstrip('='))",
        &[("V", &v.to_string())],
    )
    .remove(0)
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn jwts_are_checked_and_every_forged_or_stale_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f);
    let p = |f: &str| d(f).to_str().unwrap().to_owned();
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("rsa.pem"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &p("rsa.pem"),
        "-pubout",
        "-out",
        &p("rsa.pub"),
    ]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &p("other.pem"),
    ]);
    std::fs::write(d("hs.key"), "a-shared-secret-of-at-least-32-bytes!!").unwrap();
    let server = Server::start_with_auth(
        &d("data"),
        &[
            "--jwt-algorithm",
            "RS256",
            "--jwt-key-file",
            &p("rsa.pub"),
            "--jwt-audience",
            "wattdb",
            "--jwt-issuer",
            "https://id.example",
        ],
    );
    load(&server, &["house1-a", "house2-a"]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let good = json!({"sub": "alice", "aud": "wattdb", "iss": "https://id.example", "exp": now + 600, "nbf": now - 10, "scope": "read", "wattdb_devices": ["house1-"]});
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let rs = |claims: Value| jwt(&d("rsa.pem"), "RS256", json!({}), claims);

    // A valid token: its scope and plugs apply.
    let valid = rs(good.clone());
    let rows = sql_as(&server, &valid, "SELECT DISTINCT device_id FROM readings");
    assert_eq!(rows, vec![json!({"device_id": "house1-a"})]);
    let a = call(
        &server,
        "POST",
        "/api/v2/write",
        Some(&valid),
        &lp_line("house1-a", T0, 1.0),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(get_as(&server, &valid, "/metrics").status, 403);
    let fleet = rs(without("wattdb_devices"));
    assert_eq!(get_as(&server, &fleet, "/metrics").status, 200);

    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    let forged: Vec<(&str, String)> = vec![
        ("alg none", unsigned),
        (
            "HS256 with the RSA public key as secret",
            jwt(&d("rsa.pub"), "HS256", json!({}), good.clone()),
        ),
        (
            "HS256 with another secret",
            jwt(&d("hs.key"), "HS256", json!({}), good.clone()),
        ),
        (
            "another RSA key",
            jwt(&d("other.pem"), "RS256", json!({}), good.clone()),
        ),
        ("expired", rs(with("exp", json!(now - 120)))),
        ("not yet valid", rs(with("nbf", json!(now + 600)))),
        (
            "nbf as a string",
            rs(with("nbf", json!((now + 600).to_string()))),
        ),
        ("wrong audience", rs(with("aud", json!("someone-else")))),
        (
            "wrong issuer",
            rs(with("iss", json!("https://evil.example"))),
        ),
        ("no exp", rs(without("exp"))),
        ("no aud", rs(without("aud"))),
        ("tampered payload", {
            let t = rs(good.clone());
            let parts: Vec<&str> = t.split('.').collect();
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&with("wattdb_devices", json!([]))),
                parts[2]
            )
        }),
        ("admin limited to plugs", rs(with("scope", json!("admin")))),
    ];
    for (what, token) in &forged {
        let a = call(
            &server,
            "POST",
            "/api/v1/query",
            Some(token),
            &json!({"sql": "SELECT 1"}).to_string(),
        );
        assert_eq!(a.status, 401, "{what}: {}", a.body);
    }
    // A valid token without the needed scope: 403.
    let writer = rs(with("scope", json!(["wattdb:write"])));
    let a = call(
        &server,
        "POST",
        "/api/v1/query",
        Some(&writer),
        &json!({"sql": "SELECT 1"}).to_string(),
    );
    assert_eq!(a.status, 403, "{}", a.body);
    let a = call(
        &server,
        "POST",
        "/api/v2/write",
        Some(&writer),
        &lp_line("house1-a", T0 + 7 * S, 2.0),
    );
    assert_eq!(a.status, 204, "{}", a.body);
}

#[test]
fn ready_reports_the_object_store() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_auth(&dir.path().join("data"), &[]);
    let (status, body) = server.get("/ready");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({"status": "ready", "checks": {"wal": "ok", "object_store": "ok", "recovery": "done"}})
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_outside_the_openapi_description() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_auth(&dir.path().join("data"), &[]);
    load(&server, &["plug-1", "plug-2"]);
    let token = server.token.clone().unwrap();
    // Its `st` command, run through python3 so that PATH does not matter.
    let out = Command::new("python3")
        .args(["-c", "from schemathesis.cli import schemathesis; schemathesis()"])
        .args(["run", &format!("{}/api/v1/openapi.json", server.url), "--url", &server.url])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            "--exclude-path", "/api/v1/live",
            // Revoking tokens at random would revoke the test's own.
            "--exclude-method", "DELETE",
            "--max-examples", "40",
            "--workers", "1",
            "--request-timeout", "30",
            "--seed", "1",
        ])
        .env("NO_COLOR", "1")
        // It keeps a cache of its own in the working directory.
        .current_dir(dir.path())
        .output()
        .expect("python3 with schemathesis (installed by scripts/test)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tested: usize = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        tested >= 15,
        "schemathesis tested {tested} operations:\n{report}"
    );
    // The server is still healthy afterwards.
    assert_eq!(server.get("/health").0, 200);
}

#[test]
fn json_logs_carry_the_request_id_that_the_answer_names() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with_env(
        &data,
        &["--log-format", "json"],
        &[("RUST_LOG", "info,wattdb_api=debug")],
    );
    let resp = agent()
        .get(&format!("{}/api/v1/latest", server.url))
        .set("X-Request-Id", "dash-42.a")
        .call()
        .unwrap();
    assert_eq!(resp.header("X-Request-Id"), Some("dash-42.a"));
    // Without one (or with one that is not a short token), the server makes one up.
    let resp = agent()
        .get(&format!("{}/api/v1/nope", server.url))
        .set("X-Request-Id", "bad id with spaces")
        .call();
    let Err(ureq::Error::Status(404, resp)) = resp else {
        panic!("want 404")
    };
    let made = resp.header("X-Request-Id").unwrap().to_owned();
    assert!(made != "bad id with spaces" && made.len() == 17, "{made}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let find = |id: &str| -> Option<Value> {
        let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
        log.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["span"]["id"] == id && v["fields"]["message"] == "answered")
    };
    let (mine, other) = loop {
        if let (Some(a), Some(b)) = (find("dash-42.a"), find(&made)) {
            break (a, b);
        }
        assert!(
            Instant::now() < deadline,
            "no log line with the request ids"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(mine["fields"]["status"], 200);
    assert_eq!(mine["span"]["path"], "/api/v1/latest");
    assert_eq!(other["fields"]["status"], 404);
}
