//! `trellis call`: invoke a component's exported function over the lattice.
//!
//! Calling needs the host's invocation layer (subjects, encoding of arguments from the WIT
//! types); until the CLI is wired to it this command explains that and fails.

use crate::lattice_client::ConnectArgs;

/// Flags of `trellis call`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  trellis call hello wasi:http/incoming-handler.handle '[]'
  trellis call counter example:counter/api.increment '[\"visits\", 1]'")]
pub struct CallArgs {
    /// Component id
    pub component: String,
    /// Function to call: NAMESPACE:PACKAGE/INTERFACE.FUNCTION
    #[arg(value_name = "INTERFACE.FUNCTION")]
    pub function: String,
    /// Arguments as a JSON array [default: no arguments]
    #[arg(value_name = "ARGS")]
    pub args: Option<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Runs `trellis call`.
pub async fn run(args: CallArgs) -> anyhow::Result<()> {
    let (interface, function) = args.function.rsplit_once('.').ok_or_else(|| {
        anyhow::anyhow!(
            "expected INTERFACE.FUNCTION such as example:counter/api.increment, got {:?}",
            args.function
        )
    })?;
    if let Some(raw) = &args.args {
        let parsed: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| anyhow::anyhow!("ARGS must be a JSON array: {e}"))?;
        if !parsed.is_array() {
            anyhow::bail!("ARGS must be a JSON array such as '[\"a\", 1]'");
        }
    }
    anyhow::bail!(
        "`trellis call` is not available in this build yet (calling {function} of {interface} on {}); \
         for HTTP components, deploy them with an http-server link and use curl",
        args.component
    )
}
