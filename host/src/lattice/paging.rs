//! Replies that grow with the lattice (`link.get`, `host.get`) kept within one NATS message.
//!
//! wasmCloud answers these with everything at once; so does Trellis whenever everything fits
//! the server's `max_payload`. When it does not, the reply is an error saying how to page, never
//! a silently shortened list. A body with `offset`/`limit` ([`PageRequest`], a Trellis
//! extension) asks for one page: as many items as fit from `offset`, with the total and the
//! next offset.

use serde::Serialize;
use trellis_protocol::ctl::{CtlResponse, HostInventory, PageRequest};

use crate::lattice::store::LinkTable;

/// Room kept in every reply for the envelope and the page's own fields.
const ENVELOPE_ROOM: usize = 1024;

/// How to page, for error messages.
const HOW_TO_PAGE: &str = "send a body such as {\"offset\":0} (optionally with \"limit\") and \
                           follow \"next_offset\" until it is absent";

/// Reads the body of `link.get` or `host.get`: `None` asks for everything (an empty body or
/// `{}`, as wasmCloud clients send), `Some` for one page.
pub(crate) fn parse_page_request(op: &str, body: &[u8]) -> Result<Option<PageRequest>, String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    let request: PageRequest = serde_json::from_slice(body).map_err(|e| {
        format!(
            "{op}: the body must be empty (everything) or a page request such as \
             {{\"offset\":0,\"limit\":1000}}: {e}"
        )
    })?;
    if request.limit == Some(0) {
        return Err(format!("{op}: `limit` must be at least 1"));
    }
    Ok(request.is_paged().then_some(request))
}

/// Appends `items` to `out` as comma-separated JSON, stopping at `limit` items or before `out`
/// would grow past `budget` bytes. Returns how many items were appended.
fn append_fitting<'a, T: Serialize + 'a>(
    items: impl Iterator<Item = &'a T>,
    budget: usize,
    limit: usize,
    out: &mut Vec<u8>,
) -> usize {
    let mut taken = 0;
    let mut item = Vec::new();
    for value in items.take(limit) {
        item.clear();
        if serde_json::to_writer(&mut item, value).is_err() {
            break;
        }
        let separator = usize::from(!out.is_empty());
        if out.len() + separator + item.len() > budget {
            break;
        }
        if separator == 1 {
            out.push(b',');
        }
        out.extend_from_slice(&item);
        taken += 1;
    }
    taken
}

/// `{"success":true,"message":"","response":RESPONSE}`, the envelope [`CtlResponse::ok`]
/// encodes to, around already-encoded JSON.
fn ok_envelope(response: &[u8]) -> Vec<u8> {
    const HEAD: &[u8] = br#"{"success":true,"message":"","response":"#;
    let mut out = Vec::with_capacity(HEAD.len() + response.len() + 1);
    out.extend_from_slice(HEAD);
    out.extend_from_slice(response);
    out.push(b'}');
    out
}

/// The reply to `link.get`: every link when they fit `max_payload`, else an error saying how to
/// page; or the page `request` asks for.
pub(crate) fn link_get_reply(
    links: &LinkTable,
    request: Option<PageRequest>,
    max_payload: usize,
) -> Result<Vec<u8>, String> {
    let budget = max_payload.saturating_sub(ENVELOPE_ROOM);
    let total = links.len();
    let mut array = vec![b'['];
    let Some(request) = request else {
        let mut items = Vec::new();
        let taken = append_fitting(links.all(), budget, usize::MAX, &mut items);
        if taken < total {
            return Err(format!(
                "link.get: the lattice holds {total} links, more than one NATS message carries \
                 (max_payload {max_payload} bytes): {HOW_TO_PAGE}; each reply is \
                 {{\"links\":[...],\"offset\":N,\"total\":T,\"next_offset\":M}}. \
                 `trellis get links` pages by itself"
            ));
        }
        array.extend_from_slice(&items);
        array.push(b']');
        return Ok(ok_envelope(&array));
    };
    let offset = request.offset.unwrap_or(0);
    let mut items = Vec::new();
    let taken = append_fitting(
        links.all().skip(offset),
        budget,
        request.limit.unwrap_or(usize::MAX),
        &mut items,
    );
    if taken == 0 && offset < total {
        return Err(format!(
            "link.get: the link at offset {offset} alone is larger than one NATS message \
             (max_payload {max_payload} bytes); raise the server's max_payload"
        ));
    }
    array.extend_from_slice(&items);
    array.push(b']');
    let end = offset.saturating_add(taken);
    let mut page = Vec::with_capacity(array.len() + 96);
    page.extend_from_slice(br#"{"links":"#);
    page.extend_from_slice(&array);
    page.extend_from_slice(format!(r#","offset":{offset},"total":{total}"#).as_bytes());
    if end < total {
        page.extend_from_slice(format!(r#","next_offset":{end}"#).as_bytes());
    }
    page.push(b'}');
    Ok(ok_envelope(&page))
}

/// The reply to `host.get`: the whole inventory when it fits `max_payload`, else an error saying
/// how to page; or the page `request` asks for (components first, then providers).
pub(crate) fn inventory_reply(
    inventory: HostInventory,
    request: Option<PageRequest>,
    max_payload: usize,
) -> Result<Vec<u8>, String> {
    let Some(request) = request else {
        let reply = encode(&CtlResponse::ok(&inventory))?;
        if reply.len() > max_payload {
            return Err(format!(
                "host.get: this host's inventory ({} components, {} providers) is {} bytes, \
                 more than one NATS message carries (max_payload {max_payload} bytes): \
                 {HOW_TO_PAGE}; each page is an inventory listing part of the components and \
                 providers. `trellis get inventory` pages by itself",
                inventory.components.len(),
                inventory.providers.len(),
                reply.len()
            ));
        }
        return Ok(reply);
    };
    let mut page = inventory;
    let components = std::mem::take(&mut page.components);
    let providers = std::mem::take(&mut page.providers);
    let total = components.len() + providers.len();
    page.component_count = Some(components.len());
    page.provider_count = Some(providers.len());
    page.inventory_truncated = true;
    page.next_offset = Some(total);
    let header = encode(&CtlResponse::ok(&page))?.len();
    let budget = max_payload.saturating_sub(ENVELOPE_ROOM + header);
    let offset = request.offset.unwrap_or(0);
    let limit = request.limit.unwrap_or(usize::MAX);
    let mut scratch = Vec::new();
    let first_component = offset.min(components.len());
    let taken_components = append_fitting(
        components[first_component..].iter(),
        budget,
        limit,
        &mut scratch,
    );
    let first_provider = offset.saturating_sub(components.len()).min(providers.len());
    let taken_providers = if first_component + taken_components == components.len() {
        // Providers share what room (and limit) the components left.
        append_fitting(
            providers[first_provider..].iter(),
            budget,
            limit - taken_components,
            &mut scratch,
        )
    } else {
        0
    };
    let taken = taken_components + taken_providers;
    if taken == 0 && offset < total {
        return Err(format!(
            "host.get: the item at offset {offset} alone is larger than one NATS message \
             (max_payload {max_payload} bytes); raise the server's max_payload"
        ));
    }
    page.components = components[first_component..first_component + taken_components].to_vec();
    page.providers = providers[first_provider..first_provider + taken_providers].to_vec();
    let end = offset.saturating_add(taken);
    page.inventory_truncated = !(offset == 0 && end >= total);
    page.next_offset = (end < total).then_some(end);
    encode(&CtlResponse::ok(&page))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(value).map_err(|e| format!("cannot encode the reply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use trellis_protocol::ctl::{ComponentDescription, Link, LinkPage, ProviderDescription};

    fn table(n: usize) -> LinkTable {
        let mut table = LinkTable::default();
        for i in 0..n {
            let link: Link = serde_json::from_value(serde_json::json!({
                "source_id": format!("source-{i:06}"), "target": "target",
                "wit_namespace": "wasi", "wit_package": "keyvalue", "interfaces": ["store"]
            }))
            .unwrap();
            table.insert(link.key(), link);
        }
        table
    }

    #[test]
    fn empty_bodies_ask_for_everything() {
        assert_eq!(parse_page_request("link.get", b"").unwrap(), None);
        assert_eq!(parse_page_request("link.get", b" {} ").unwrap(), None);
        let page = parse_page_request("link.get", br#"{"offset":5}"#).unwrap();
        assert_eq!(page.unwrap().offset, Some(5));
        assert!(parse_page_request("link.get", br#"{"limit":0}"#).is_err());
        let e = parse_page_request("link.get", br#"{"ofset":1}"#).unwrap_err();
        assert!(e.contains("offset"), "{e}");
    }

    #[test]
    fn all_links_fit_or_the_error_says_how_to_page() {
        let links = table(50);
        let reply = link_get_reply(&links, None, 1024 * 1024).unwrap();
        let decoded: CtlResponse<Vec<Link>> = serde_json::from_slice(&reply).unwrap();
        assert_eq!(decoded.response.unwrap().len(), 50);
        let e = link_get_reply(&links, None, 4096).unwrap_err();
        assert!(
            e.contains("50 links") && e.contains("max_payload 4096"),
            "{e}"
        );
        assert!(e.contains("{\"offset\":0}"), "{e}");
    }

    #[test]
    fn pages_cover_every_link_once_and_fit() {
        let links = table(1000);
        let max = 8 * 1024;
        let mut offset = 0;
        let mut seen = Vec::new();
        loop {
            let request = PageRequest {
                offset: Some(offset),
                limit: None,
            };
            let reply = link_get_reply(&links, Some(request), max).unwrap();
            assert!(reply.len() <= max, "{} > {max}", reply.len());
            let page: LinkPage = serde_json::from_slice::<CtlResponse<LinkPage>>(&reply)
                .unwrap()
                .response
                .unwrap();
            assert_eq!(page.total, 1000);
            assert_eq!(page.offset, offset);
            assert!(!page.links.is_empty());
            seen.extend(page.links.into_iter().map(|l| l.source_id));
            match page.next_offset {
                Some(next) => offset = next,
                None => break,
            }
        }
        let expected: Vec<String> = (0..1000).map(|i| format!("source-{i:06}")).collect();
        assert_eq!(seen, expected);
        let limited = link_get_reply(
            &links,
            Some(PageRequest {
                offset: Some(990),
                limit: Some(3),
            }),
            max,
        )
        .unwrap();
        let page = serde_json::from_slice::<CtlResponse<LinkPage>>(&limited)
            .unwrap()
            .response
            .unwrap();
        assert_eq!(page.links.len(), 3);
        assert_eq!(page.next_offset, Some(993));
        let past_end = link_get_reply(
            &links,
            Some(PageRequest {
                offset: Some(5000),
                limit: None,
            }),
            max,
        )
        .unwrap();
        let page = serde_json::from_slice::<CtlResponse<LinkPage>>(&past_end)
            .unwrap()
            .response
            .unwrap();
        assert!(page.links.is_empty() && page.next_offset.is_none());
    }

    fn inventory(components: usize, providers: usize) -> HostInventory {
        HostInventory {
            host_id: "NHOST".into(),
            components: (0..components)
                .map(|i| ComponentDescription {
                    id: format!("c{i:04}"),
                    image_ref: format!("file:///components/{}.wasm", "x".repeat(200)),
                    ..Default::default()
                })
                .collect(),
            providers: (0..providers)
                .map(|i| ProviderDescription {
                    id: format!("p{i:04}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn inventories_fit_or_page() {
        let inv = inventory(100, 7);
        let whole = inventory_reply(inv.clone(), None, 1024 * 1024).unwrap();
        let decoded: CtlResponse<HostInventory> = serde_json::from_slice(&whole).unwrap();
        assert_eq!(decoded.response.unwrap(), inv);
        let e = inventory_reply(inv.clone(), None, 8 * 1024).unwrap_err();
        assert!(
            e.contains("100 components") && e.contains("{\"offset\":0}"),
            "{e}"
        );

        let max = 8 * 1024;
        let (mut components, mut providers) = (Vec::new(), Vec::new());
        let mut offset = 0;
        loop {
            let request = PageRequest {
                offset: Some(offset),
                limit: None,
            };
            let reply = inventory_reply(inv.clone(), Some(request), max).unwrap();
            assert!(reply.len() <= max);
            let page = serde_json::from_slice::<CtlResponse<HostInventory>>(&reply)
                .unwrap()
                .response
                .unwrap();
            assert!(page.inventory_truncated);
            assert_eq!(
                (page.component_count, page.provider_count),
                (Some(100), Some(7))
            );
            components.extend(page.components);
            providers.extend(page.providers);
            match page.next_offset {
                Some(next) => offset = next,
                None => break,
            }
        }
        assert_eq!(components, inv.components);
        assert_eq!(providers, inv.providers);

        let small = inventory(2, 1);
        let reply = inventory_reply(small.clone(), Some(PageRequest::first()), max).unwrap();
        let page = serde_json::from_slice::<CtlResponse<HostInventory>>(&reply)
            .unwrap()
            .response
            .unwrap();
        assert!(!page.inventory_truncated && page.next_offset.is_none());
        assert_eq!((page.components.len(), page.providers.len()), (2, 1));
    }
}
