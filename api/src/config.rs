//! Settings of `wattdb serve` from three places, in this order of precedence: flags,
//! `WATTDB_*` environment variables, a TOML file (`--config FILE`). Each setting has
//! the name of its flag everywhere: `--retention-raw 7d`, `WATTDB_RETENTION_RAW=7d`,
//! `retention-raw = "7d"` (or `retention_raw`, or `raw` in a `[retention]` table).
//!
//! The settings found in the environment and the file become flags after the given
//! ones, so clap checks every value whatever its source, and its message names the
//! setting.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::ArgAction;
use clap::parser::ValueSource;

/// Where each setting of the subcommand came from, by flag name.
pub type Sources = BTreeMap<String, String>;

/// The subcommands that take the serve settings.
const SERVE_LIKE: [&str; 2] = ["serve", "config"];

/// `argv` with the settings of the environment and the config file appended as flags,
/// and where each setting came from. Parse errors (and --help) exit as clap does.
pub fn layer(cmd: &clap::Command, argv: Vec<OsString>) -> anyhow::Result<(Vec<OsString>, Sources)> {
    let matches = cmd.clone().get_matches_from(argv.clone());
    let Some((name, sub)) = matches.subcommand() else {
        return Ok((argv, Sources::new()));
    };
    if !SERVE_LIKE.contains(&name) {
        return Ok((argv, Sources::new()));
    }
    let Some(subcmd) = cmd.find_subcommand(name) else {
        return Ok((argv, Sources::new()));
    };
    let file: Option<PathBuf> = sub.get_one::<PathBuf>("config").cloned();
    let mut table = match &file {
        Some(path) => read_toml(path)?,
        None => BTreeMap::new(),
    };
    let file_name = file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut sources = Sources::new();
    let mut extra: Vec<OsString> = Vec::new();
    for arg in subcmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "config" {
            continue;
        }
        let in_file = table.remove(long);
        let env_name = format!("WATTDB_{}", long.to_uppercase().replace('-', "_"));
        let source = match sub.value_source(arg.get_id().as_str()) {
            Some(ValueSource::CommandLine) => "flag".to_owned(),
            Some(ValueSource::EnvVariable) => format!("env {env_name}"),
            _ => {
                if let Some(v) = std::env::var_os(&env_name) {
                    push_flag(
                        &mut extra,
                        arg,
                        long,
                        &toml::Value::String(v.to_string_lossy().into_owned()),
                    )
                    .with_context(|| format!("environment variable {env_name}"))?;
                    format!("env {env_name}")
                } else if let Some(v) = in_file {
                    push_flag(&mut extra, arg, long, &v)
                        .with_context(|| format!("{file_name}: setting {long}"))?;
                    format!("config {file_name}")
                } else {
                    "default".to_owned()
                }
            }
        };
        sources.insert(long.to_owned(), source);
    }
    if let Some(unknown) = table.keys().next() {
        bail!(
            "{file_name}: unknown setting {unknown:?} (settings are named like the flags of `wattdb serve --help`)"
        );
    }
    let mut out = argv;
    out.extend(extra);
    Ok((out, sources))
}

/// The file's settings by flag name: `a_b` is `a-b`, and `[t] k` is `t-k`.
fn read_toml(path: &PathBuf) -> anyhow::Result<BTreeMap<String, toml::Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let doc: toml::Table = text
        .parse()
        .with_context(|| format!("config file {} is not valid TOML", path.display()))?;
    let mut out = BTreeMap::new();
    for (k, v) in doc {
        let k = k.replace('_', "-");
        match v {
            toml::Value::Table(t) => {
                for (k2, v2) in t {
                    out.insert(format!("{k}-{}", k2.replace('_', "-")), v2);
                }
            }
            v => {
                out.insert(k, v);
            }
        }
    }
    Ok(out)
}

fn push_flag(
    extra: &mut Vec<OsString>,
    arg: &clap::Arg,
    long: &str,
    value: &toml::Value,
) -> anyhow::Result<()> {
    let flag = OsString::from(format!("--{long}"));
    match arg.get_action() {
        ArgAction::SetTrue => {
            let on = match value {
                toml::Value::Boolean(b) => *b,
                toml::Value::String(s) => match s.trim() {
                    "1" | "true" | "yes" | "on" => true,
                    "0" | "false" | "no" | "off" | "" => false,
                    other => bail!("{other:?} is not true or false"),
                },
                other => bail!("{other} is not true or false"),
            };
            if on {
                extra.push(flag);
            }
        }
        ArgAction::Append => {
            let items = match value {
                toml::Value::Array(a) => a.clone(),
                toml::Value::String(s) => s
                    .split(',')
                    .map(|x| toml::Value::String(x.trim().to_owned()))
                    .collect(),
                v => vec![v.clone()],
            };
            for item in items {
                extra.push(flag.clone());
                extra.push(scalar(&item)?.into());
            }
        }
        _ => {
            extra.push(flag);
            extra.push(scalar(value)?.into());
        }
    }
    Ok(())
}

fn scalar(v: &toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("{other} is not a single value"),
    })
}

/// Prints the effective settings as a TOML file, each with where it came from;
/// passwords and secrets are masked.
pub fn print(cmd: &clap::Command, matches: &clap::ArgMatches, sources: &Sources) {
    let Some(("config", sub)) = matches.subcommand() else {
        return;
    };
    let Some(subcmd) = cmd.find_subcommand("config") else {
        return;
    };
    println!(
        "# effective settings of `wattdb serve` (flags > WATTDB_* environment > config file > defaults)"
    );
    for arg in subcmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "config" {
            continue;
        }
        let values: Vec<String> = sub
            .get_raw(arg.get_id().as_str())
            .map(|v| v.map(|x| x.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let source = sources.get(long).map_or("default", String::as_str);
        let secret = long.contains("password") || long.contains("secret");
        let shown = if values.is_empty() {
            if matches!(arg.get_action(), ArgAction::SetTrue) {
                "false".to_owned()
            } else {
                format!("# {long} is not set")
            }
        } else if secret {
            "\"********\"".to_owned()
        } else if matches!(arg.get_action(), ArgAction::Append) {
            toml::Value::Array(values.into_iter().map(toml::Value::String).collect()).to_string()
        } else if matches!(arg.get_action(), ArgAction::SetTrue) {
            values.join("")
        } else {
            toml::Value::String(values.join(",")).to_string()
        };
        if shown.starts_with('#') {
            println!("{shown}  ({source})");
        } else {
            println!("{long} = {shown}  # {source}");
        }
    }
}
