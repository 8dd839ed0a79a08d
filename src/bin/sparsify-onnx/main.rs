//! `sparsify-onnx`: the command line (the root package's binary, feature `cli`). The only code that knows
//! argv, the terminal and exit codes.
//!
//! Exit codes: 0 ok, 1 error, 2 usage (including bad pipeline text), 3 validation over its threshold
//! (for `check`: an eligible weight that is not N:M compliant).

mod check;
mod common;
mod inspect;
mod list_passes;
mod progress;
mod report;
mod run;
mod sensitivity;
mod validate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "sparsify-onnx", version, about = "Sparsity transformations over ONNX graphs, validated in tract")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline of passes on a model and write the result.
    Run(run::Args),
    /// One row per prunable weight: node, op, shape, dtype, sparsity, output and reduction axes.
    Inspect(inspect::Args),
    /// Run two models in tract on the same inputs and compare every output.
    Validate(validate::Args),
    /// N:M (2:4) legality of every weight along its reduction axis; exit 3 if an eligible weight is not compliant.
    Check(check::Args),
    /// List the passes, their descriptions and options.
    ListPasses,
    /// Per prunable weight: output error on calibration data when only it is pruned, at several sparsities.
    Sensitivity(sensitivity::Args),
}

/// How a command ended, mapped to the exit code.
pub enum Outcome {
    Ok,
    Usage(String),
    OverThreshold,
}

fn main() -> ExitCode {
    // A panic inside a guarded tract run is reported as that run's error: print nothing for it here.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !sparsify_onnx::validate::in_tract_run() {
            report(info);
        }
    }));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => run::main(a),
        Command::Inspect(a) => inspect::main(a),
        Command::Validate(a) => validate::main(a),
        Command::Check(a) => check::main(a),
        Command::ListPasses => list_passes::main(),
        Command::Sensitivity(a) => sensitivity::main(a),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::OverThreshold) => ExitCode::from(3),
        Ok(Outcome::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {}", chain_text(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes joined by ": ", leaving out a cause whose text the message already holds
/// (several library errors quote their source).
fn chain_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let t = cause.to_string();
        if out.contains(&t) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::chain_text;

    /// An error whose message quotes its source (as the pass manager's and the pass errors do) is
    /// printed with the source's text once; a source with new text is still appended.
    #[test]
    fn quoted_causes_are_printed_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("pass 'mask' failed: {source}")]
        struct Quoting {
            source: std::io::Error,
        }
        let inner = || std::io::Error::other("tract cannot run the model");
        let e = anyhow::Error::new(Quoting { source: inner() });
        assert_eq!(chain_text(&e), "pass 'mask' failed: tract cannot run the model");
        let e = anyhow::Error::new(inner()).context("loading m.onnx");
        assert_eq!(chain_text(&e), "loading m.onnx: tract cannot run the model");
    }
}
