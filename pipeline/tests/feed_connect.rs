//! The live-feed connection loop against a WebSocket server the test runs
//! on loopback, scripted from Alpaca's documented handshake (feeds.md §1):
//! a drop mid-stream, a data stall (pings still answered), a dead path (no
//! pongs), a 406 connection limit and a 402 auth failure, in that order,
//! over five connections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use stockanomaly::sources::alpaca::stream::{AlpacaCredentials, AlpacaStream, AlpacaSubscription};
use stockanomaly::sources::alpaca::AlpacaDecoder;
use stockanomaly::sources::feed::connect::{ConnectOptions, FeedClient, FeedError};
use stockanomaly::sources::feed::FaultAction;
use stockanomaly::tick::Validator;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Server = WebSocketStream<TcpStream>;

/// What the server saw.
#[derive(Default)]
struct Seen {
    texts: Vec<String>,
    pings: usize,
}

async fn accept(l: &TcpListener) -> Server {
    let (tcp, _) = l.accept().await.unwrap();
    tokio_tungstenite::accept_async(tcp).await.unwrap()
}

async fn send(ws: &mut Server, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

/// The next text message from the client, counting pings on the way.
async fn recv(ws: &mut Server, seen: &Mutex<Seen>) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let t = t.to_string();
                seen.lock().unwrap().texts.push(t.clone());
                return t;
            }
            Some(Ok(Message::Ping(_))) => seen.lock().unwrap().pings += 1,
            Some(Ok(_)) => {}
            other => panic!("client went away: {other:?}"),
        }
    }
}

/// Greets, checks the credentials, authenticates and acknowledges the
/// subscription, as Alpaca does.
async fn handshake(ws: &mut Server, seen: &Mutex<Seen>) {
    send(ws, r#"[{"T":"success","msg":"connected"}]"#).await;
    let auth: serde_json::Value = serde_json::from_str(&recv(ws, seen).await).unwrap();
    assert_eq!(auth["action"], "auth");
    assert_eq!(auth["key"], "test-key");
    assert_eq!(auth["secret"], "test-secret");
    send(ws, r#"[{"T":"success","msg":"authenticated"}]"#).await;
    let sub: serde_json::Value = serde_json::from_str(&recv(ws, seen).await).unwrap();
    assert_eq!(sub["action"], "subscribe");
    assert_eq!(sub["trades"][0], "AAPL");
    send(
        ws,
        r#"[{"T":"subscription","trades":["AAPL"],"quotes":[],"bars":[],"updatedBars":[],"dailyBars":[],"statuses":[],"lulds":[],"corrections":["AAPL"],"cancelErrors":["AAPL"]}]"#,
    )
    .await;
}

fn trade(i: u32) -> String {
    format!(
        r#"{{"T":"t","S":"AAPL","i":{i},"x":"V","p":189.4{i},"s":100,"c":["@"],"z":"C","t":"2025-03-03T14:30:0{i}.123456789Z"}}"#
    )
}

async fn server(l: TcpListener, seen: Arc<Mutex<Seen>>) {
    // 1: two trades (one with a bad neighbour), pings answered, then the
    // connection is dropped without a close frame.
    let mut ws = accept(&l).await;
    handshake(&mut ws, &seen).await;
    send(&mut ws, &format!("[{},{}]", trade(1), trade(2))).await;
    send(
        &mut ws,
        r#"[{"T":"t","S":"AAPL","p":"bad"},{"T":"mystery"}]"#,
    )
    .await;
    while seen.lock().unwrap().pings < 2 {
        match ws.next().await {
            Some(Ok(Message::Ping(_))) => seen.lock().unwrap().pings += 1,
            Some(Ok(_)) => {}
            other => panic!("client went away: {other:?}"),
        }
    }
    drop(ws);

    // 2: one trade, then no data while pings are still answered, until
    // the client's watchdog leaves.
    let mut ws = accept(&l).await;
    handshake(&mut ws, &seen).await;
    send(&mut ws, &format!("[{}]", trade(3))).await;
    while let Some(Ok(m)) = ws.next().await {
        if m.is_ping() {
            seen.lock().unwrap().pings += 1;
        }
    }

    // 3: one trade, then nothing sent and nothing read (so no pong
    // either), until the client gives up on this connection.
    let mut stalled = accept(&l).await;
    handshake(&mut stalled, &seen).await;
    send(&mut stalled, &format!("[{}]", trade(4))).await;

    // 4: the client came back on its own; refuse with 406.
    let mut ws = accept(&l).await;
    drop(stalled);
    send(&mut ws, r#"[{"T":"success","msg":"connected"}]"#).await;
    recv(&mut ws, &seen).await;
    send(
        &mut ws,
        r#"[{"T":"error","code":406,"msg":"connection limit exceeded"}]"#,
    )
    .await;

    // 5: the credentials are refused.
    let mut ws = accept(&l).await;
    send(&mut ws, r#"[{"T":"success","msg":"connected"}]"#).await;
    recv(&mut ws, &seen).await;
    send(&mut ws, r#"[{"T":"error","code":402,"msg":"auth failed"}]"#).await;
    // Wait for the client to leave.
    while let Some(Ok(_)) = ws.next().await {}
}

#[tokio::test]
async fn reconnects_reauthenticates_watches_and_stops_on_fatal_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v2/test", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let server = tokio::spawn(server(listener, seen.clone()));

    let options = ConnectOptions {
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        max_failures: 5,
        connect_timeout: Duration::from_secs(5),
        watchdog: Duration::from_millis(1000),
        ping_every: Duration::from_millis(50),
        pong_timeout: Duration::from_millis(500),
    };
    let protocol = AlpacaStream::new(
        url,
        AlpacaCredentials::new("test-key", "test-secret"),
        AlpacaSubscription {
            trades: vec!["AAPL".into()],
            ..Default::default()
        },
    );
    let mut client = FeedClient::new(protocol, AlpacaDecoder::new(Validator::new()), options);
    let mut ticks = 0;
    let mut rejects = Vec::new();
    let run = async {
        loop {
            match client.next_batch(Duration::from_millis(100)).await {
                Ok(b) => {
                    ticks += b.ticks.num_rows();
                    rejects.extend(b.rejects);
                }
                Err(e) => break e,
            }
        }
    };
    let err = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the client ends within 30 s");
    let tail = client.finish();
    ticks += tail.ticks.num_rows();

    match &err {
        FeedError::Fatal(f) => {
            assert_eq!(f.code, Some(402));
            assert_eq!(f.action, FaultAction::Fatal);
        }
        other => panic!("{other}"),
    }
    let text = err.to_string();
    assert!(text.contains("APCA_API_KEY_ID"), "{text}");
    assert!(!text.contains("test-secret"), "{text}");
    assert_eq!(ticks, 4, "every trade sent, once");
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert_eq!(client.counters().unknown.get("mystery"), 1);
    let stats = client.stats().clone();
    assert_eq!(stats.connects, 5, "{stats:?}");
    assert_eq!(stats.reconnects, 4, "{stats:?}");
    assert_eq!((stats.stalls, stats.pong_timeouts), (1, 1), "{stats:?}");
    assert_eq!(stats.faults, 2, "{stats:?}");
    server.await.unwrap();
    let seen = seen.lock().unwrap();
    let auths = seen.texts.iter().filter(|t| t.contains("\"auth\"")).count();
    let subs = seen
        .texts
        .iter()
        .filter(|t| t.contains("\"subscribe\""))
        .count();
    assert_eq!((auths, subs), (5, 3), "re-authenticated every time");
    assert!(seen.pings >= 2);
}

#[tokio::test]
async fn gives_up_after_the_allowed_failures() {
    // A port with nothing listening: bind, note it, close.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let options = ConnectOptions {
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        max_failures: 3,
        ..ConnectOptions::default()
    };
    let protocol = AlpacaStream::new(
        format!("ws://{addr}/v2/test?token=SECRET"),
        AlpacaCredentials::new("k", "s"),
        AlpacaSubscription::default(),
    );
    let mut client = FeedClient::new(protocol, AlpacaDecoder::new(Validator::new()), options);
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        client.next_batch(Duration::from_secs(5)),
    )
    .await
    .unwrap()
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, FeedError::GaveUp { failures: 4, .. }),
        "{text}"
    );
    assert!(!text.contains("SECRET"), "{text}");
    assert_eq!(client.stats().failed_attempts, 4);
}

// The handshake callback's `Result<Response, ErrorResponse>` is
// tungstenite's signature, not ours to shrink.
#[allow(clippy::result_large_err)]
#[tokio::test]
async fn finnhub_token_in_the_url_subscribes_on_open() {
    use stockanomaly::sources::finnhub::stream::FinnhubStream;
    use stockanomaly::sources::finnhub::FinnhubDecoder;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut query = String::new();
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
            query = req.uri().query().unwrap_or("").to_owned();
            Ok(resp)
        })
        .await
        .unwrap();
        let seen = Mutex::new(Seen::default());
        let a = recv(&mut ws, &seen).await;
        let b = recv(&mut ws, &seen).await;
        send(
            &mut ws,
            r#"{"type":"trade","data":[{"s":"AAPL","p":189.42,"t":1741012201123,"v":100,"c":["1"]},{"s":"MSFT","p":412.07,"t":1741012201124,"v":5}]}"#,
        )
        .await;
        send(&mut ws, r#"{"type":"ping"}"#).await;
        ws.close(None).await.unwrap();
        (query, a, b)
    });
    let protocol = FinnhubStream::new(&base, "tok123", vec!["AAPL".into(), "MSFT".into()]).unwrap();
    let mut client = FeedClient::new(
        protocol,
        FinnhubDecoder::new(Validator::new()),
        ConnectOptions::default(),
    );
    let mut ticks = 0;
    while ticks < 2 {
        let b = tokio::time::timeout(
            Duration::from_secs(10),
            client.next_batch(Duration::from_millis(100)),
        )
        .await
        .unwrap()
        .unwrap();
        ticks += b.ticks.num_rows();
    }
    let (query, a, b) = server.await.unwrap();
    assert_eq!(query, "token=tok123");
    assert!(a.contains("\"subscribe\"") && a.contains("AAPL"), "{a}");
    assert!(b.contains("MSFT"), "{b}");
    assert_eq!(client.counters().controls, 1, "the ping");
    client.close().await;
}
