//! Test fixture: real component-model [`Type`]s, taken from a component compiled from WAT.
//!
//! `Type` values can only come from a compiled component, so the tests declare one import
//! per signature they need and read its parameter and result types back.

use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// A component whose imported functions cover every value kind the codec carries.
const KINDS_WAT: &str = r#"
(component
  (type $category' (enum "tool" "part" "consumable"))
  (import "category" (type $category (eq $category')))
  (type $tags' (flags "f0" "f1" "f2" "f3" "f4" "f5" "f6" "f7" "f8" "f9"))
  (import "tags" (type $tags (eq $tags')))
  (type $small-tags' (flags "fragile" "heavy" "hazardous"))
  (import "small-tags" (type $small-tags (eq $small-tags')))
  (type $dims' (record (field "width" f32) (field "depth" f64)))
  (import "dims" (type $dims (eq $dims')))
  (type $event' (variant (case "received" u32) (case "lost") (case "shipped" (tuple string u32))))
  (import "event" (type $event (eq $event')))
  (type $item' (record
    (field "sku" string)
    (field "category" $category)
    (field "tags" $small-tags)
    (field "dims" (option $dims))
    (field "grade" char)
    (field "history" (list s64))
    (field "last-event" $event)))
  (import "item" (type $item (eq $item')))
  (import "scalars" (func
    (param "b" bool) (param "a" s8) (param "c" u8) (param "d" s16) (param "e" u16)
    (param "f" s32) (param "g" u32) (param "h" s64) (param "i" u64)
    (param "j" f32) (param "k" f64) (param "l" char) (param "m" string)
    (result (tuple u8 string))))
  (import "compound" (func
    (param "item" $item)
    (param "items" (list $item))
    (param "bytes" (list u8))
    (param "nested" (list (list (option string))))
    (param "tags" $tags)
    (param "event" $event)
    (param "category" $category)
    (param "pair" (tuple s32 (option u64) (result string (error u8))))
    (param "unit-result" (result))
    (param "ok-only" (result u32))
    (param "err-only" (result (error string)))
    (result (result $item (error string)))))
  (import "deep" (func
    (param "x" (option (option (option (option (option (option (option (option (option (option u8)))))))))))))
  (import "units" (func (param "units" (list (result)))))
)
"#;

/// The engine and component the fixture types live in (types borrow nothing, but keep both alive).
pub struct Fixture {
    engine: Engine,
    component: Component,
}

impl Fixture {
    /// Compiles the fixture component.
    pub fn new() -> Self {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).expect("engine");
        let component = Component::new(&engine, KINDS_WAT).expect("fixture WAT compiles");
        Self { engine, component }
    }

    /// The imported function `name`.
    pub fn func(&self, name: &str) -> ComponentFunc {
        let ty = self.component.component_type();
        match ty.get_import(&self.engine, name).map(|e| e.ty) {
            Some(ComponentItem::ComponentFunc(func)) => func,
            other => panic!("fixture import {name} is not a function: {other:?}"),
        }
    }

    /// The parameter types of the imported function `name`.
    pub fn params(&self, name: &str) -> Vec<Type> {
        self.func(name).params().map(|(_, ty)| ty).collect()
    }

    /// The result types of the imported function `name`.
    pub fn results(&self, name: &str) -> Vec<Type> {
        self.func(name).results().collect()
    }
}
