//! Direct calls against a real `nats-server`: learning endpoints, the same answers as over
//! NATS, falling back, and a listener that shrugs off bad peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::direct::{DirectListener, DirectPeers, MAX_DIRECT_PARAMS, PROBE_EVERY};
use super::nats_tests::{context_arrives_whole, demo_handler, pattern, NatsServer, IFACE};
use super::*;

const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

async fn listener() -> DirectListener {
    DirectListener::bind(SocketAddr::from(LOOPBACK), None)
        .await
        .expect("bind the direct listener")
}

/// Serves `target` over NATS and on `listener`, which the server keeps running.
async fn serve_direct(
    nats: &async_nats::Client,
    target: &str,
    listener: DirectListener,
) -> InvocationServer {
    let options = ServerOptions {
        direct: Some(listener),
        ..ServerOptions::default()
    };
    InvocationServer::serve(nats.clone(), "test", target, options, demo_handler)
        .await
        .expect("serve")
}

fn direct_client(nats: async_nats::Client) -> (InvocationClient, Arc<DirectPeers>) {
    let peers = Arc::new(DirectPeers::default());
    let client = InvocationClient::new(nats, "test").with_direct_peers(peers.clone());
    (client, peers)
}

async fn call(
    client: &InvocationClient,
    function: &str,
    params: &[u8],
) -> Result<Bytes, InvocationError> {
    client
        .invoke(
            "callee",
            IFACE,
            function,
            Bytes::copy_from_slice(params),
            CallContext::default(),
        )
        .await
}

/// A call to `callee` that must be answered `within`.
async fn call_within(
    client: &InvocationClient,
    function: &str,
    params: &'static [u8],
    within: Duration,
) -> Result<Bytes, InvocationError> {
    let context = CallContext {
        deadline: Some(SystemTime::now() + within),
        ..CallContext::default()
    };
    client
        .invoke(
            "callee",
            IFACE,
            function,
            Bytes::from_static(params),
            context,
        )
        .await
}

/// Counts the calls to `callee` that crossed NATS: a plain subscriber sees each one.
struct NatsCallCounter {
    nats: async_nats::Client,
    calls: async_nats::Subscriber,
    marks: async_nats::Subscriber,
}

impl NatsCallCounter {
    async fn start(server: &NatsServer) -> Self {
        let nats = server.connect().await;
        let calls = nats
            .subscribe("trellis.rpc.test.callee.>")
            .await
            .expect("subscribe");
        let marks = nats.subscribe("test.marks").await.expect("subscribe");
        let mut counter = Self { nats, calls, marks };
        // Once a mark comes back, the server has both subscriptions.
        assert_eq!(counter.take().await, 0);
        counter
    }

    /// Calls seen since the last count. A mark sent through the server after them comes back
    /// on the same connection behind them, so when it arrives they all have.
    async fn take(&mut self) -> usize {
        self.nats
            .publish("test.marks", Bytes::new())
            .await
            .expect("publish a mark");
        tokio::time::timeout(Duration::from_secs(10), self.marks.next())
            .await
            .expect("the mark came back")
            .expect("subscribed");
        let mut seen = 0;
        // Unconstrained: tokio's co-operative budget would end the loop after ~128 polls.
        while let Some(Some(_)) = tokio::task::unconstrained(self.calls.next()).now_or_never() {
            seen += 1;
        }
        seen
    }
}

#[tokio::test]
async fn calls_go_direct_once_a_reply_says_where_with_the_same_answers() {
    let server = NatsServer::start(None).await;
    // Nothing but the server holds the listener: serving keeps it up.
    let _callee = serve_direct(&server.connect().await, "callee", listener().await).await;
    let (client, peers) = direct_client(server.connect().await);
    let mut counter = NatsCallCounter::start(&server).await;

    assert_eq!(
        call(&client, "echo", b"first").await.expect("echo"),
        "first"
    );
    assert_eq!(counter.take().await, 1, "the first call goes through NATS");
    assert_eq!(
        peers.endpoints_of("callee"),
        1,
        "its reply advertised the listener"
    );

    let calls = 3 * PROBE_EVERY as usize;
    for i in 0..calls {
        let params = format!("call {i}");
        let reply = call(&client, "echo", params.as_bytes())
            .await
            .expect("echo");
        assert_eq!(reply, params.as_bytes());
    }
    let over_nats = counter.take().await;
    assert!(
        over_nats <= calls / PROBE_EVERY as usize + 1,
        "{over_nats} of {calls} calls crossed NATS; only probes should"
    );

    // The context arrives whole.
    context_arrives_whole(&client).await;

    // Typed errors, as over NATS.
    let trap = call(&client, "fail", b"").await.unwrap_err();
    assert_eq!(
        trap,
        InvocationError::trap("wasm trap: unreachable executed")
    );
    let panic = call(&client, "panic", b"").await.unwrap_err();
    assert!(matches!(panic, InvocationError::Trap { .. }), "{panic}");
    let unknown = call(&client, "nope", b"").await.unwrap_err();
    assert!(
        matches!(unknown, InvocationError::BadRequest { .. }),
        "{unknown}"
    );
    let started = Instant::now();
    let hang = call_within(&client, "hang", b"", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(hang, InvocationError::DeadlineExceeded { .. }),
        "{hang}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline held"
    );

    // A 5 MB result comes back in one frame; 2 MB of params go through NATS in chunks.
    let five_mb = 5 * 1024 * 1024;
    let big = call(&client, "big", five_mb.to_string().as_bytes())
        .await
        .expect("big result");
    assert_eq!(big.as_ref(), pattern(five_mb).as_slice());
    // A caller with a smaller cap refuses it, as it would a chunked result over NATS.
    let capped = InvocationClient::new(server.connect().await, "test")
        .with_max_payload(1024 * 1024)
        .with_direct_peers(peers.clone());
    let too_large = call(&capped, "big", five_mb.to_string().as_bytes())
        .await
        .map(|results| results.len());
    assert_eq!(
        too_large,
        Err(InvocationError::PayloadTooLarge {
            size: five_mb as u64,
            limit: 1024 * 1024
        })
    );
    let params = pattern(2 * MAX_DIRECT_PARAMS);
    let _ = counter.take().await;
    let echoed = call(&client, "echo", &params).await.expect("big params");
    assert_eq!(echoed.as_ref(), params.as_slice());
    assert!(
        counter.take().await >= 1,
        "params over the direct cap went through NATS"
    );
}

#[tokio::test]
async fn a_stopped_target_answers_not_served_and_the_call_falls_back_to_nats() {
    let server = NatsServer::start(None).await;
    let listener = listener().await;
    let callee = serve_direct(&server.connect().await, "callee", listener.clone()).await;
    let (client, peers) = direct_client(server.connect().await);
    call(&client, "echo", b"x").await.expect("learn");
    assert_eq!(peers.endpoints_of("callee"), 1);

    drop(callee);
    // The listener stops at once; NATS unsubscribes asynchronously, so a call may still race
    // the old subscription (and time out). Never a transport error, and never a hang.
    let started = Instant::now();
    loop {
        match call_within(&client, "echo", b"", Duration::from_millis(300)).await {
            Err(InvocationError::NoResponders { .. }) => break,
            Err(InvocationError::DeadlineExceeded { .. }) => {}
            other => panic!("a stopped target gave {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still served");
    }
    assert_eq!(
        peers.endpoints_of("callee"),
        0,
        "the endpoint was forgotten"
    );
}

#[tokio::test]
async fn a_peer_that_goes_away_fails_only_the_call_in_flight_then_nats_takes_over() {
    let server = NatsServer::start(None).await;
    let listener = listener().await;
    // The direct replica says when a `hang` call has reached it.
    let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
    let handler = move |call: IncomingCall| {
        let entered = entered_tx.clone();
        async move {
            if call.function == "hang" {
                let _ = entered.send(());
            }
            demo_handler(call).await
        }
    };
    let options = ServerOptions {
        direct: Some(listener.clone()),
        ..ServerOptions::default()
    };
    let callee =
        InvocationServer::serve(server.connect().await, "test", "callee", options, handler)
            .await
            .expect("serve");
    // A second replica that serves NATS only.
    let _nats_only = InvocationServer::serve(
        server.connect().await,
        "test",
        "callee",
        ServerOptions::default(),
        demo_handler,
    )
    .await
    .expect("serve");
    let (client, peers) = direct_client(server.connect().await);
    while peers.endpoints_of("callee") == 0 {
        call(&client, "echo", b"x").await.expect("learn");
    }

    // The next call is the first since learning, so direct (not a probe). It hangs in the
    // direct replica; then that replica's host goes away.
    let hanging = {
        let client = client.clone();
        tokio::spawn(
            async move { call_within(&client, "hang", b"", Duration::from_secs(30)).await },
        )
    };
    tokio::time::timeout(Duration::from_secs(10), entered.recv())
        .await
        .expect("the hang call never reached the direct replica");
    drop(callee);
    drop(listener);
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), hanging)
        .await
        .expect("the call in flight did not wait for its 30 s deadline")
        .expect("join");
    match result {
        Err(InvocationError::Transport { message }) => {
            assert!(message.contains("during the call"), "{message}");
        }
        other => panic!("the call in flight gave {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // Later calls reach the NATS-only replica; the dead endpoint is dropped.
    let started = Instant::now();
    let mut successes = 0;
    while successes < 10 {
        match call_within(&client, "echo", b"z", Duration::from_millis(500)).await {
            Ok(reply) => {
                assert_eq!(reply, "z");
                successes += 1;
            }
            // The stopped server's NATS subscription may linger for a moment.
            Err(InvocationError::DeadlineExceeded { .. }) => {}
            Err(other) => panic!("after the peer left: {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "NATS never took over"
        );
    }
    assert_eq!(peers.endpoints_of("callee"), 0);
}

#[tokio::test]
async fn a_wrong_token_is_refused_and_the_call_goes_through_nats() {
    let server = NatsServer::start(None).await;
    let listener = listener().await;
    let _callee = serve_direct(&server.connect().await, "callee", listener.clone()).await;
    let (client, peers) = direct_client(server.connect().await);
    let mut counter = NatsCallCounter::start(&server).await;
    let real = listener.advertisement().to_owned();
    let mut parts = real.split(' ');
    let (address, _token, machine, fingerprint) =
        (parts.next(), parts.next(), parts.next(), parts.next());
    let forged = format!(
        "{} not-the-token {} {}",
        address.expect("address"),
        machine.expect("machine"),
        fingerprint.expect("fingerprint")
    );
    peers.learn("callee", &forged);
    assert_eq!(peers.endpoints_of("callee"), 1);

    assert_eq!(call(&client, "echo", b"a").await.expect("echo"), "a");
    assert_eq!(
        counter.take().await,
        1,
        "refused, so the call went through NATS"
    );
    assert_eq!(
        peers.endpoints_of("callee"),
        1,
        "and learned the real endpoint"
    );
    assert_eq!(call(&client, "echo", b"b").await.expect("echo"), "b");
    assert_eq!(counter.take().await, 0, "the real endpoint works");
    // The forged one stays refused even when advertised again.
    peers.learn("callee", &forged);
    assert_eq!(peers.endpoints_of("callee"), 1);
}

#[tokio::test]
async fn an_impostor_at_the_advertised_address_gets_neither_the_token_nor_the_call() {
    let server = NatsServer::start(None).await;
    let listener = listener().await;
    let _callee = serve_direct(&server.connect().await, "callee", listener.clone()).await;
    let (client, peers) = direct_client(server.connect().await);
    let mut counter = NatsCallCounter::start(&server).await;

    // A process with a certificate of its own that took over an address, recording whatever
    // a caller sends it after the TLS handshake.
    let impostor = tokio::net::TcpListener::bind(SocketAddr::from(LOOPBACK))
        .await
        .expect("bind");
    let impostor_addr = impostor.local_addr().expect("address");
    let identity = super::direct::tls::ServerIdentity::generate().expect("identity");
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = received.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = impostor.accept().await else {
                return;
            };
            if let Ok(mut tls) = identity.acceptor.accept(stream).await {
                let mut sink = Vec::new();
                let _ = tls.read_to_end(&mut sink).await;
                seen.fetch_add(sink.len(), std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let real: Vec<&str> = listener.advertisement().split(' ').collect();
    let forged = format!("{impostor_addr} {} {} {}", real[1], real[2], real[3]);
    peers.learn("callee", &forged);
    assert_eq!(peers.endpoints_of("callee"), 1);

    assert_eq!(call(&client, "echo", b"a").await.expect("echo"), "a");
    assert_eq!(
        counter.take().await,
        1,
        "refused, so the call went through NATS"
    );
    assert_eq!(
        received.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the impostor's certificate was refused before the token or the call was sent"
    );
    // The real endpoint, learned from the NATS reply, serves the next call directly.
    assert_eq!(call(&client, "echo", b"b").await.expect("echo"), "b");
    assert_eq!(counter.take().await, 0);
    accept.abort();
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to `address` accepting only the certificate `fingerprint` names.
async fn tls(address: SocketAddr, fingerprint: &str) -> Tls {
    let stream = TcpStream::connect(address).await.expect("connect");
    super::direct::tls::connect_pinned(stream, fingerprint)
        .await
        .expect("TLS with the advertised certificate")
}

async fn handshake(address: SocketAddr, token: &str, fingerprint: &str) -> Tls {
    let mut stream = tls(address, fingerprint).await;
    let mut hello = b"TRLSDIR1".to_vec();
    hello.extend_from_slice(&u16::try_from(token.len()).expect("short").to_le_bytes());
    hello.extend_from_slice(token.as_bytes());
    stream.write_all(&hello).await.expect("hello");
    stream.flush().await.expect("hello");
    assert_eq!(
        stream.read_u8().await.expect("verdict"),
        0,
        "handshake accepted"
    );
    stream
}

/// Reads until the peer closes (or breaks the connection); true if it did within 5 s.
async fn closes<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink))
        .await
        .is_ok()
}

#[tokio::test]
async fn the_listener_refuses_bad_peers_and_keeps_serving() {
    let server = NatsServer::start(None).await;
    let listener = listener().await;
    let _callee = serve_direct(&server.connect().await, "callee", listener.clone()).await;
    let address = listener.local_addr();
    let advertised: Vec<String> = listener
        .advertisement()
        .split(' ')
        .map(str::to_owned)
        .collect();
    let (token, fingerprint) = (&advertised[1], &advertised[3]);

    // Not TLS: closed without an answer.
    let mut http = TcpStream::connect(address).await.expect("connect");
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(closes(&mut http).await);

    // TLS, but not our protocol inside: refused, closed.
    let mut junk = tls(address, fingerprint).await;
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    junk.flush().await.expect("flush");
    assert_eq!(junk.read_u8().await.expect("verdict"), 1);
    assert!(closes(&mut junk).await);

    // A frame that claims 4 GiB: closed without allocating it.
    let mut huge = handshake(address, token, fingerprint).await;
    let mut head = u32::MAX.to_le_bytes().to_vec();
    head.push(1);
    head.extend_from_slice(&7u64.to_le_bytes());
    huge.write_all(&head).await.expect("write");
    huge.flush().await.expect("flush");
    assert!(closes(&mut huge).await);

    // A call to a target not served here: "not served" (kind 4) for that call id.
    let mut raw = handshake(address, token, fingerprint).await;
    let frame = super::direct::frame::encode_call(
        9,
        "someone-else",
        IFACE,
        "echo",
        &CallContext::default(),
        SystemTime::now() + Duration::from_secs(5),
        b"",
    );
    raw.write_all(&frame).await.expect("write");
    raw.flush().await.expect("flush");
    let mut head = [0u8; 13];
    raw.read_exact(&mut head).await.expect("answer");
    assert_eq!(head[4], 4, "not served");
    assert_eq!(u64::from_le_bytes(head[5..13].try_into().expect("id")), 9);

    // A call frame whose body is cut short: a bad-request error (kind 3), connection kept.
    // Length 12 = kind + call id + 3 bytes, too few for even the deadline.
    let mut broken = 12u32.to_le_bytes().to_vec();
    broken.push(1);
    broken.extend_from_slice(&10u64.to_le_bytes());
    broken.extend_from_slice(&[1, 2, 3]);
    raw.write_all(&broken).await.expect("write");
    raw.flush().await.expect("flush");
    raw.read_exact(&mut head).await.expect("answer");
    assert_eq!(head[4], 3, "an error answer");
    let len = u32::from_le_bytes(head[..4].try_into().expect("len")) as usize - 9;
    let mut body = vec![0u8; len];
    raw.read_exact(&mut body).await.expect("body");
    assert!(
        String::from_utf8_lossy(&body).contains("malformed direct call"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // Through all that, real callers are served directly.
    let (client, peers) = direct_client(server.connect().await);
    for i in 0..5 {
        let params = format!("ok {i}");
        assert_eq!(
            call(&client, "echo", params.as_bytes())
                .await
                .expect("echo"),
            params.as_bytes()
        );
    }
    assert_eq!(peers.endpoints_of("callee"), 1);
}

#[tokio::test]
async fn calls_that_do_not_fit_a_frame_go_through_nats_whole() {
    let server = NatsServer::start(None).await;
    let _callee = serve_direct(&server.connect().await, "callee", listener().await).await;
    let (client, peers) = direct_client(server.connect().await);
    call(&client, "echo", b"learn").await.expect("learn");
    assert_eq!(peers.endpoints_of("callee"), 1);
    let mut counter = NatsCallCounter::start(&server).await;

    // A frame string holds 64 KiB: a longer source id would arrive cut.
    let source = "s".repeat(70_000);
    let context = CallContext {
        source_id: Some(source.clone()),
        ..CallContext::default()
    };
    let reply = client
        .invoke("callee", IFACE, "context", Bytes::new(), context)
        .await
        .expect("context");
    let reply = String::from_utf8_lossy(&reply).into_owned();
    assert_eq!(reply.split('|').nth(1), Some(source.as_str()));
    assert_eq!(
        counter.take().await,
        1,
        "a long source id goes through NATS"
    );

    // Params at the direct cap plus 120 KB of context: over the listener's frame cap, which
    // would close the connection under the call.
    let params = pattern(MAX_DIRECT_PARAMS);
    let context = CallContext {
        traceparent: Some("t".repeat(60_000)),
        link_name: Some("l".repeat(60_000)),
        ..CallContext::default()
    };
    let echoed = client
        .invoke(
            "callee",
            IFACE,
            "echo",
            Bytes::from(params.clone()),
            context,
        )
        .await
        .expect("echo");
    assert_eq!(echoed.as_ref(), params.as_slice());
    assert!(
        counter.take().await >= 1,
        "an oversized frame goes through NATS"
    );

    // Ordinary calls still go directly.
    assert_eq!(
        call(&client, "echo", b"after").await.expect("echo"),
        "after"
    );
    assert_eq!(counter.take().await, 0, "the direct connection still works");
    assert_eq!(peers.endpoints_of("callee"), 1);
}
