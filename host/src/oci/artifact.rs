//! Component artifacts: the media types wasmCloud and wash write, picking the wasm layer of a
//! manifest, the config pushed beside it, and what a component imports, exports and claims.

use anyhow::{bail, Context};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use serde::{Deserialize, Serialize};

/// The wasm layer media type of the CNCF Wasm OCI artifact layout (wash, wasmCloud 1.x).
pub const WASM_LAYER_MEDIA_TYPE: &str = "application/wasm";
/// The layer media type of older wasmCloud and wash artifacts.
pub const LEGACY_WASM_LAYER_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
/// The layer media type of the older `oci-distribution` wasm layout.
pub const WASM_CONTENT_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// The config media type of the CNCF Wasm OCI artifact layout.
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The OCI image manifest media type (what `trellis push` writes).
pub const OCI_MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker's image manifest media type (read too).
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The OCI image index media type (a multi-platform list: not a component).
pub const OCI_INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Docker's manifest list media type (not a component either).
pub const DOCKER_MANIFEST_LIST_MEDIA_TYPE: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// The layer media type of a wasmCloud provider archive.
pub const PROVIDER_ARCHIVE_MEDIA_TYPE: &str =
    "application/vnd.wasmcloud.provider.archive.layer.v1+par";

/// Layer media types that hold a component's wasm bytes.
pub const WASM_LAYER_MEDIA_TYPES: &[&str] = &[
    WASM_LAYER_MEDIA_TYPE,
    LEGACY_WASM_LAYER_MEDIA_TYPE,
    WASM_CONTENT_LAYER_MEDIA_TYPE,
];

/// Manifest media types asked for when resolving a ref.
pub const ACCEPTED_MANIFEST_MEDIA_TYPES: &[&str] = &[
    OCI_MANIFEST_MEDIA_TYPE,
    DOCKER_MANIFEST_MEDIA_TYPE,
    OCI_INDEX_MEDIA_TYPE,
    DOCKER_MANIFEST_LIST_MEDIA_TYPE,
];

/// The largest manifest accepted (registries themselves cap manifests at 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The largest config blob read by `inspect`.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Parses a raw manifest and checks it describes one image (not an index).
pub fn parse_manifest(raw: &[u8]) -> anyhow::Result<OciImageManifest> {
    if raw.len() > MAX_MANIFEST_BYTES {
        bail!(
            "the manifest is {} bytes, over the {MAX_MANIFEST_BYTES}-byte limit",
            raw.len()
        );
    }
    let value: serde_json::Value =
        serde_json::from_slice(raw).context("the manifest is not JSON")?;
    let media_type = value.get("mediaType").and_then(|m| m.as_str());
    if matches!(
        media_type,
        Some(OCI_INDEX_MEDIA_TYPE | DOCKER_MANIFEST_LIST_MEDIA_TYPE)
    ) || value.get("manifests").is_some()
    {
        bail!(
            "the ref names an image index (a multi-platform list), not a component artifact: \
             name the component's own manifest (push it with `trellis push` or `wash push`)"
        );
    }
    serde_json::from_value(value).context("the manifest is not an OCI image manifest")
}

/// The one wasm layer of `manifest`. Refuses a manifest without one (naming what it holds, so
/// a provider archive or a container image is recognised) or with several.
pub fn wasm_layer(manifest: &OciImageManifest) -> anyhow::Result<&OciDescriptor> {
    let wasm: Vec<&OciDescriptor> = manifest
        .layers
        .iter()
        .filter(|l| WASM_LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
        .collect();
    match wasm.as_slice() {
        [one] => Ok(one),
        [] => {
            let found: Vec<&str> = manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect();
            if found.contains(&PROVIDER_ARCHIVE_MEDIA_TYPE) {
                bail!(
                    "this is a provider archive, not a component: start it with `provider.start`"
                );
            }
            bail!(
                "the artifact has no wasm layer (its layers are {found:?}); a component's layer is \
                 one of {WASM_LAYER_MEDIA_TYPES:?}: push the .wasm with `trellis push` or `wash push`"
            )
        }
        several => bail!(
            "the artifact has {} wasm layers ({}); a component artifact has exactly one, as \
             wasmCloud requires: push the component again as a single layer",
            several.len(),
            several
                .iter()
                .map(|l| l.digest.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The config blob of a component artifact (`application/vnd.wasm.config.v0+json`), field for
/// field as the CNCF Wasm OCI layout (and so wash and wasmCloud) write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WasmConfig {
    /// When the artifact was made (RFC 3339).
    pub created: String,
    /// Who made it.
    #[serde(default)]
    pub author: Option<String>,
    /// Always `wasm`.
    pub architecture: String,
    /// `wasip2` for a component, `wasip1` for a core module.
    pub os: String,
    /// The digests of the manifest's layers, in order.
    #[serde(default)]
    pub layer_digests: Vec<String>,
    /// The component's interfaces (required when `os` is `wasip2`).
    #[serde(default)]
    pub component: Option<ComponentInterfaces>,
}

/// A component's world as recorded in [`WasmConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentInterfaces {
    /// What it exports (`wasi:http/incoming-handler@0.2.0`, ...).
    pub exports: Vec<String>,
    /// What it imports.
    pub imports: Vec<String>,
    /// The world it targets, when known.
    #[serde(default)]
    pub target: Option<String>,
}

/// What a `.wasm` is and declares, read without compiling it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WasmInfo {
    /// `component` or `module`.
    pub kind: String,
    /// Top-level imports (interfaces for a component; `module::name` for a core module).
    pub imports: Vec<String>,
    /// Top-level exports.
    pub exports: Vec<String>,
    /// The claims of a signed (wasmCloud `wasmcloud_jwt` or `jwt` section) artifact, decoded but
    /// not verified (see [`crate::security::claims::verify`]).
    pub claims: Option<serde_json::Value>,
}

/// Reads a `.wasm`'s kind, top-level imports and exports, and embedded claims.
pub fn wasm_info(bytes: &[u8]) -> anyhow::Result<WasmInfo> {
    use wasmparser::{Encoding, Parser, Payload};
    let mut kind = None;
    let mut depth = 0usize;
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut claims = None;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.context("not a valid WebAssembly binary")?;
        match payload {
            Payload::Version { encoding, .. } if depth == 0 && kind.is_none() => {
                kind = Some(match encoding {
                    Encoding::Component => "component",
                    Encoding::Module => "module",
                });
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    imports.push(import.context("bad import section")?.name.name.to_string());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.context("bad export section")?.name.name.to_string());
                }
            }
            Payload::ImportSection(reader) if depth == 0 => {
                for import in reader.into_imports() {
                    let import = import.context("bad import section")?;
                    imports.push(format!("{}::{}", import.module, import.name));
                }
            }
            Payload::ExportSection(reader) if depth == 0 => {
                for export in reader {
                    exports.push(export.context("bad export section")?.name.to_string());
                }
            }
            Payload::CustomSection(section)
                if depth == 0 && crate::security::claims::is_jwt_section(section.name()) =>
            {
                claims = std::str::from_utf8(section.data())
                    .ok()
                    .and_then(crate::security::claims::decode_unverified);
            }
            _ => {}
        }
    }
    Ok(WasmInfo {
        kind: kind.context("empty WebAssembly binary")?.to_string(),
        imports,
        exports,
        claims,
    })
}
