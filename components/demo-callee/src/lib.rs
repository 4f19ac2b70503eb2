//! demo-callee: exports `trellis:demo/inventory@0.1.0`.
//!
//! Every function is deterministic so that a caller (the `demo-caller` component or a
//! host test) can check each returned value exactly.

wit_bindgen::generate!({
    path: "../../wit/trellis-demo",
    world: "callee",
});

use exports::trellis::demo::inventory::{Category, Guest, Item, StockError, StockEvent, Tags};

struct Callee;

impl Guest for Callee {
    fn echo_item(item: Item) -> Item {
        item
    }

    fn apply_event(item: Item, event: StockEvent) -> Result<Item, StockError> {
        let mut item = item;
        match event {
            StockEvent::Received(n) => item.quantity = item.quantity.wrapping_add(n),
            StockEvent::Shipped((_, n)) => {
                if n > item.quantity {
                    return Err(StockError::NotEnough(item.quantity));
                }
                item.quantity -= n;
            }
            StockEvent::Lost => return Err(StockError::ItemLost),
            StockEvent::Adjusted(delta) => {
                let adjusted = i64::from(item.quantity) + i64::from(delta);
                item.quantity = u32::try_from(adjusted)
                    .map_err(|_| StockError::Invalid(format!("quantity would be {adjusted}")))?;
            }
        }
        item.history.push(i64::from(item.quantity));
        Ok(item)
    }

    fn find(items: Vec<Item>, sku: String) -> Option<Item> {
        items.into_iter().find(|item| item.sku == sku)
    }

    #[allow(clippy::too_many_arguments)]
    fn integers(
        a: i8,
        b: u8,
        c: i16,
        d: u16,
        e: i32,
        f: u32,
        g: i64,
        h: u64,
    ) -> (i8, u8, i16, u16, i32, u32, i64, u64) {
        (
            a.wrapping_add(1),
            b.wrapping_add(1),
            c.wrapping_add(1),
            d.wrapping_add(1),
            e.wrapping_add(1),
            f.wrapping_add(1),
            g.wrapping_add(1),
            h.wrapping_add(1),
        )
    }

    fn floats(x: f32, y: f64) -> (f32, f64) {
        (x * 2.0, y / 2.0)
    }

    fn shout(s: String, c: char) -> String {
        // One stdout line per call: the host logs it with the invocation's trace id
        // (integration/tests/observability.rs checks that).
        println!("demo-callee: shouting {} chars", s.chars().count());
        let mut out = s.to_uppercase();
        for _ in 0..3 {
            out.push(c);
        }
        out
    }

    fn toggle(t: Tags) -> Tags {
        Tags::all() - t
    }

    fn next_category(c: Category) -> Category {
        match c {
            Category::Tool => Category::Part,
            Category::Part => Category::Consumable,
            Category::Consumable => Category::Tool,
        }
    }

    fn checksum(data: Vec<u8>) -> Result<u32, String> {
        if data.is_empty() {
            return Err("empty".to_string());
        }
        Ok(data
            .iter()
            .fold(0u32, |sum, byte| sum.wrapping_add(u32::from(*byte))))
    }

    fn blob(len: u32) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    fn maybe_fail(fail: bool) -> Result<(), String> {
        if fail {
            Err("asked to fail".to_string())
        } else {
            Ok(())
        }
    }
}

export!(Callee);
