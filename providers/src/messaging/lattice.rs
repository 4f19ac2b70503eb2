//! Delivering a message to a handler component on another host: a lattice call of its
//! exported `wasmcloud:messaging/handler@0.2.0` `handle-message`, the same call path as a
//! component-to-component call (`trellis.rpc.{lattice}.{component}.…`, answered by one of the
//! hosts running the component: they serve it in a queue group named after the component).
//!
//! The params are encoded by hand in the lattice codec's format
//! (`trellis_host::invocation::codec`), since the provider's host may not run the component
//! and so has no types to drive the generic encoder:
//!
//! - `broker-message` is a record, its fields in order: `subject` (string: LEB128 byte
//!   length, UTF-8), `body` (`list<u8>`: LEB128 count, the bytes), `reply-to`
//!   (`option<string>`: `0`, or `1` then the string);
//! - the result `result<_, string>` is `0`, or `1` then the error string.

/// The interface handler components export.
pub const HANDLER_INTERFACE: &str = "wasmcloud:messaging/handler@0.2.0";

/// The function called for each message.
pub const HANDLE_MESSAGE: &str = "handle-message";

fn write_uleb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_uleb(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The encoded parameter list of `handle-message(msg)`.
pub fn encode_handle_message(subject: &str, body: &[u8], reply_to: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(subject.len() + body.len() + 16);
    write_bytes(&mut out, subject.as_bytes());
    write_bytes(&mut out, body);
    match reply_to {
        None => out.push(0),
        Some(reply_to) => {
            out.push(1);
            write_bytes(&mut out, reply_to.as_bytes());
        }
    }
    out
}

/// Reads an unsigned LEB128 value; `None` when truncated or longer than 64 bits.
fn read_uleb(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if i == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

/// Decodes the encoded result list of `handle-message`: `Ok(Ok(()))` when the handler
/// accepted the message, `Ok(Err(why))` when it returned an error, `Err` when the bytes are
/// not a `result<_, string>`.
pub fn decode_handle_result(bytes: &[u8]) -> Result<Result<(), String>, String> {
    match bytes.split_first() {
        Some((0, [])) => Ok(Ok(())),
        Some((1, rest)) => {
            let (len, rest) = read_uleb(rest).ok_or("a truncated error length")?;
            let len = usize::try_from(len).map_err(|_| "an error length too large")?;
            if rest.len() != len {
                return Err(format!(
                    "an error string of {len} bytes with {} bytes left",
                    rest.len()
                ));
            }
            let text =
                String::from_utf8(rest.to_vec()).map_err(|_| "an error that is not UTF-8")?;
            Ok(Err(text))
        }
        Some((tag, _)) => Err(format!(
            "result tag {tag} or trailing bytes where `result<_, string>` was expected"
        )),
        None => Err("an empty reply where `result<_, string>` was expected".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_follow_the_codec_layout() {
        assert_eq!(
            encode_handle_message("a.b", b"hi", None),
            [&[3u8][..], b"a.b", &[2], b"hi", &[0]].concat()
        );
        assert_eq!(
            encode_handle_message("s", b"", Some("_INBOX.x")),
            [&[1u8][..], b"s", &[0], &[1, 8], b"_INBOX.x"].concat()
        );
        // Lengths over 127 take two LEB128 bytes.
        let body = vec![7u8; 300];
        let encoded = encode_handle_message("s", &body, None);
        assert_eq!(&encoded[2..4], &[0xac, 0x02]);
        assert_eq!(encoded.len(), 2 + 2 + 300 + 1);
    }

    #[test]
    fn results_decode_and_garbage_is_refused() {
        assert_eq!(decode_handle_result(&[0]), Ok(Ok(())));
        assert_eq!(
            decode_handle_result(&[&[1u8, 4][..], b"nope"].concat()),
            Ok(Err("nope".to_string()))
        );
        for bad in [&[][..], &[2], &[0, 0], &[1], &[1, 5, b'a'], &[1, 1, 0xff]] {
            assert!(decode_handle_result(bad).is_err(), "{bad:?}");
        }
    }

    /// The built `messaging_handler` guest (built by `components/build.sh` when needed).
    fn handler_wasm() -> std::path::PathBuf {
        let components = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../components");
        let output = std::process::Command::new("bash")
            .arg(components.join("build.sh"))
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("running components/build.sh");
        assert!(
            output.status.success(),
            "components/build.sh failed (is the wasm32-wasip2 target installed?):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        components.join("target/wasm32-wasip2/release/messaging_handler.wasm")
    }

    /// The hand-written encoding is what the host's codec makes of the real export's types,
    /// both ways.
    #[test]
    fn the_encoding_matches_the_codec_for_the_real_export() {
        use trellis_host::invocation::codec::{decode_values, encode_values};
        use wasmtime::component::types::ComponentItem;
        use wasmtime::component::{Component, Val};

        let engine = wasmtime::Engine::default();
        let component =
            Component::from_file(&engine, handler_wasm()).expect("messaging_handler compiles");
        let (params, results) = component
            .component_type()
            .exports(&engine)
            .find_map(|(name, item)| match item.ty {
                ComponentItem::ComponentInstance(instance) if name == HANDLER_INTERFACE => instance
                    .exports(&engine)
                    .find_map(|(function, item)| match item.ty {
                        ComponentItem::ComponentFunc(func) if function == HANDLE_MESSAGE => Some((
                            func.params().map(|(_, t)| t).collect::<Vec<_>>(),
                            func.results().collect::<Vec<_>>(),
                        )),
                        _ => None,
                    }),
                _ => None,
            })
            .expect("messaging_handler exports handle-message");

        for reply_to in [None, Some("_INBOX.abc")] {
            let body: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
            let ours = encode_handle_message("orders.new", &body, reply_to);
            let decoded = decode_values(&ours, &params).expect("the codec reads our params");
            let expected = Val::Record(vec![
                ("subject".into(), Val::String("orders.new".into())),
                (
                    "body".into(),
                    Val::List(body.iter().map(|b| Val::U8(*b)).collect()),
                ),
                (
                    "reply-to".into(),
                    Val::Option(reply_to.map(|r| Box::new(Val::String(r.into())))),
                ),
            ]);
            assert_eq!(decoded, vec![expected.clone()]);
            assert_eq!(encode_values(&[expected], &params).expect("encode"), ours);
        }
        let ok = encode_values(&[Val::Result(Ok(None))], &results).expect("encode ok");
        assert_eq!(decode_handle_result(&ok), Ok(Ok(())));
        let err = encode_values(
            &[Val::Result(Err(Some(Box::new(Val::String("no".into())))))],
            &results,
        )
        .expect("encode err");
        assert_eq!(decode_handle_result(&err), Ok(Err("no".to_string())));
    }
}
