use std::process::ExitCode;

use clap::Parser;
use cloudflow::app;
use cloudflow::cli::{Cli, OutputFormat};
use cloudflow::error::Error;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let level = if cli.verbose {
        "cloudflow=debug"
    } else {
        "cloudflow=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOUDFLOW_LOG")
                .unwrap_or_else(|_| level.into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    // One TLS crypto provider for every client (kube, the GKE client): aws-lc-rs.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let format = cli.output;
    match runtime.block_on(app::run(cli)) {
        Ok(report) => {
            app::print(format, &report);
            ExitCode::SUCCESS
        }
        Err(e) => {
            report_error(format, &e);
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// clap's own errors: help and version as clap prints them; usage errors exit 2, and under
/// `-o json` (or `CLOUDFLOW_OUTPUT=json`) stdout still holds one JSON document.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let _ = e.print();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if wants_json(&args, std::env::var("CLOUDFLOW_OUTPUT").ok().as_deref()) {
        let rendered = e.to_string();
        let message = rendered
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_string();
        let doc = serde_json::json!({"error": {"kind": "usage", "message": message, "detail": rendered, "exit_code": 2}});
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON value")
        );
    }
    ExitCode::from(2)
}

/// Whether the raw arguments (which clap refused) ask for JSON output.
fn wants_json(args: &[String], env: Option<&str>) -> bool {
    let mut json = env == Some("json");
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => break,
            "-o" | "--output" => {
                if let Some(v) = it.next() {
                    json = v == "json";
                }
            }
            "-ojson" | "--output=json" => json = true,
            s if s.starts_with("--output=")
                || (s.starts_with("-o") && s.len() > 2 && !s.starts_with("--")) =>
            {
                json = false
            }
            _ => {}
        }
    }
    json
}

fn report_error(format: OutputFormat, e: &Error) {
    match e {
        Error::Spec(spec) => {
            let report = miette::Report::new(clone_spec_error(spec));
            eprintln!("{report:?}");
        }
        other => eprintln!("error: {other}"),
    }
    if format == OutputFormat::Json {
        let doc = serde_json::json!({"error": {"kind": e.kind(), "message": e.to_string(), "exit_code": e.exit_code()}});
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("JSON value")
        );
    }
}

/// miette wants ownership; spec errors are cheap to rebuild.
fn clone_spec_error(e: &cloudflow::spec::SpecError) -> cloudflow::spec::SpecError {
    use cloudflow::spec::SpecError;
    match e {
        SpecError::Read { path, message } => SpecError::Read {
            path: path.clone(),
            message: message.clone(),
        },
        SpecError::At {
            file,
            line,
            column,
            message,
            src,
            span,
        } => SpecError::At {
            file: file.clone(),
            line: *line,
            column: *column,
            message: message.clone(),
            src: miette::NamedSource::new(src.name(), src.inner().clone()),
            span: *span,
        },
    }
}
