//! The `wattdb` binary: `serve`, `token`, `config`, the benchmarks, and the WAL
//! `check`/`repair` tools.

mod config;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing::{info, warn};
use wattdb_api::auth::jwt::{JwtAlgorithm, JwtConfig};
use wattdb_api::auth::{Auth, AuthConfig, NewToken, Scope, TokenInfo, TokenStore, random_hex};
use wattdb_api::mqtt::{BrokerLogin, EmbeddedBroker, EngineSink};
use wattdb_api::{ApiConfig, AppState, QueryLimits};
use wattdb_engine::rollup::RollupConfig;
use wattdb_engine::{
    CompactionConfig, Engine, EngineConfig, RetentionConfig, RollupSettings, S3Config, Store,
    StoreConfig,
};
use wattdb_ingest::mqtt::Route;
use wattdb_ingest::subscriber::{Subscriber, SubscriberConfig, SubscriberError};
use wattdb_ingest::{MqttDecoderConfig, TopicRouter};
use wattdb_query::{QueryConfig, QueryEngine};
use wattdb_storage::wal;

/// jemalloc rather than glibc's allocator: persist cycles free hundreds of MiB at a time,
/// which glibc's arenas kept fragmented, so resident memory crept up over long runs
/// (see "A million plugs" in the README).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
mod allocator {
    #[global_allocator]
    static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// Lets jemalloc's background threads return freed pages to the system once they
    /// have been unused for its decay time (10 s), instead of the threads that allocate
    /// doing it on their way.
    pub(crate) fn background_threads() {
        if let Err(error) = tikv_jemalloc_ctl::background_thread::write(true) {
            tracing::warn!(%error, "jemalloc background threads could not start; freed memory goes back to the system more slowly");
        }
    }
}

/// WattDB: a time-series engine for smart-plug telemetry.
#[derive(Debug, Parser)]
#[command(name = "wattdb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: HTTP writes and queries over a durable write-ahead log.
    Serve(Box<ServeArgs>),
    /// Print the settings `serve` would run with (same flags, environment and
    /// --config file), each with where it came from; secrets are masked.
    Config(Box<ServeArgs>),
    /// Create, list or revoke API tokens (works whether or not the server runs; a
    /// running server picks changes up within a second).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Simulate a fleet of smart plugs writing to a running WattDB (over HTTP, or
    /// through an MQTT broker it reads), then verify that every acknowledged reading
    /// is stored exactly once; also reports the server's own WAL fsync and write
    /// latency for the run, from its /metrics.
    Loadgen(LoadgenCli),
    /// Measure MQTT ingest through a broker: its own delivery ceiling to a subscriber
    /// that only counts, or a running WattDB's sustained rate (with loss verified).
    MqttBench(MqttBenchCli),
    /// Time dashboard and analytics questions against a running WattDB that holds
    /// data (e.g. after `wattdb loadgen --backfill 7d`), end to end over HTTP.
    QueryBench(QueryBenchCli),
    /// Time WAL-like commits (write, then fdatasync) on the disk of a data directory,
    /// without a server: the floor under the ack latency a server on that disk can
    /// give. The defaults are the WAL's stream at 500,000 readings/s.
    DiskBench(DiskBenchCli),
    /// Inspect or repair the write-ahead log of a stopped server.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (the only time it is shown; only its hash is kept).
    Create {
        #[arg(
            long,
            env = "WATTDB_DATA_DIR",
            default_value = "wattdb-data",
            value_name = "DIR"
        )]
        data_dir: PathBuf,
        /// What the token may do (repeatable or comma-separated): read, write, admin.
        #[arg(long = "scope", value_enum, value_delimiter = ',', required = true)]
        scopes: Vec<Scope>,
        /// Limit the token to plugs whose ids start with these prefixes
        /// (comma-separated); not with admin.
        #[arg(long, value_delimiter = ',', value_name = "PREFIX,…")]
        devices: Vec<String>,
        /// A name to recognise the token by in `list`.
        #[arg(long)]
        name: Option<String>,
        /// The token stops working after this long (e.g. 30d, 12h).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        expires_in: Option<Duration>,
        /// Print one JSON object (with the token) instead of the token alone.
        #[arg(long)]
        json: bool,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(
            long,
            env = "WATTDB_DATA_DIR",
            default_value = "wattdb-data",
            value_name = "DIR"
        )]
        data_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; a running server refuses it within a second.
    Revoke {
        #[arg(
            long,
            env = "WATTDB_DATA_DIR",
            default_value = "wattdb-data",
            value_name = "DIR"
        )]
        data_dir: PathBuf,
        /// The token's id (from `list`).
        id: String,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// A TOML file of settings, named like these flags (`retention-raw = "7d"`);
    /// flags and WATTDB_* environment variables take precedence over it.
    #[arg(long, env = "WATTDB_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where WattDB keeps its files (the WAL in DIR/wal).
    #[arg(
        long,
        env = "WATTDB_DATA_DIR",
        default_value = "wattdb-data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// Address for the HTTP API (port 0 picks a free port).
    #[arg(long, env = "WATTDB_HTTP_ADDR", default_value = "127.0.0.1:8181")]
    http_addr: SocketAddr,
    /// Accept every request without a token (local experiments only; a warning
    /// says so at start).
    #[arg(long)]
    without_auth: bool,
    /// Requests per second one token may make, in bursts of as many; more get 429
    /// with Retry-After (0: no limit).
    #[arg(long, default_value_t = 0, value_name = "RPS")]
    rate_limit_rps: u32,
    /// Queries (SQL, series, exports) running at once; more get 429.
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_concurrent_queries: usize,
    /// Rows one POST /api/v1/query answer may hold (exports have no limit).
    #[arg(long, default_value_t = 10_000_000, value_name = "ROWS")]
    max_result_rows: u64,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(flatten)]
    jwt: JwtArgs,
    /// How long the WAL writer waits for more writes to share an fsync, in
    /// milliseconds. 0: no wait; writes that arrive during an fsync share the next.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    group_commit_ms: u64,
    /// Size at which WAL segments roll, in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    wal_segment_mib: u64,
    /// Persisted WAL segments kept on disk to be written over rather than deleted and
    /// created anew (0: delete them).
    #[arg(long, default_value_t = 8, value_name = "SEGMENTS")]
    wal_spare_segments: usize,
    /// Largest request body in bytes, after decompression (larger: 413).
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES")]
    max_body_bytes: usize,
    /// Write batches that may wait for the WAL; more get 503 (backpressure).
    #[arg(long, default_value_t = 4096, value_name = "BATCHES")]
    write_queue: usize,
    /// Memory the in-memory buffer may hold before writes get 503, in MiB.
    #[arg(long, default_value_t = 4096, value_name = "MIB")]
    max_buffer_mib: usize,
    /// Memory one query may use, in MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    query_memory_mib: usize,
    /// Longest a query may run, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    query_timeout_s: u64,
    /// Longest an export (GET /api/v1/export) may run, in seconds.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    export_timeout_s: u64,
    /// A live subscriber (GET /api/v1/live) that takes no message for this long is
    /// disconnected, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    live_send_timeout_s: u64,
    /// Persist the buffer to Parquet at least this often, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    persist_interval_s: u64,
    /// ... and as soon as the buffer holds this much, in MiB.
    #[arg(long, default_value_t = 352, value_name = "MIB")]
    persist_mib: usize,
    /// Merge the small Parquet files of a partition once it has this many.
    #[arg(long, default_value_t = 8, value_name = "FILES")]
    compact_min_files: usize,
    /// Files smaller than this are merged, in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    compact_small_mib: u64,
    /// How long raw readings are kept (e.g. 7d, 12h; `forever` keeps them).
    #[arg(long, default_value = "7d", value_name = "DURATION", value_parser = parse_retention)]
    retention_raw: Retention,
    /// How long 1-minute rollups are kept.
    #[arg(long = "retention-1m", default_value = "30d", value_name = "DURATION", value_parser = parse_retention)]
    retention_1m: Retention,
    /// How long 1-hour rollups are kept.
    #[arg(long = "retention-1h", default_value = "1y", value_name = "DURATION", value_parser = parse_retention)]
    retention_1h: Retention,
    /// How long 1-day rollups are kept.
    #[arg(long = "retention-1d", default_value = "5y", value_name = "DURATION", value_parser = parse_retention)]
    retention_1d: Retention,
    /// Readings later than this (behind the newest reading) are stored but no longer
    /// update rollups.
    #[arg(long, default_value = "3d", value_name = "DURATION", value_parser = parse_duration)]
    late_horizon: Duration,
    /// Longest interval between two readings of a plug over which power is integrated
    /// into energy_wh and relay on-time (a longer one counts as missing data); under 1h.
    #[arg(long, default_value = "300s", value_name = "DURATION", value_parser = parse_duration)]
    rollup_gap_cap: Duration,
    /// Keep Parquet files in this S3-compatible bucket instead of the data directory.
    /// Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and the other
    /// usual AWS_* variables).
    #[arg(long, env = "WATTDB_S3_BUCKET", value_name = "BUCKET")]
    s3_bucket: Option<String>,
    /// S3 endpoint, for S3-compatible servers (e.g. http://127.0.0.1:9000).
    #[arg(
        long,
        env = "WATTDB_S3_ENDPOINT",
        value_name = "URL",
        requires = "s3_bucket"
    )]
    s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION, else us-east-1).
    #[arg(long, env = "WATTDB_S3_REGION", requires = "s3_bucket")]
    s3_region: Option<String>,
    /// Key prefix under which WattDB's layout starts in the bucket.
    #[arg(
        long,
        env = "WATTDB_S3_PREFIX",
        default_value = "",
        requires = "s3_bucket"
    )]
    s3_prefix: String,
    /// Allow a plain-http S3 endpoint (local test servers).
    #[arg(long, env = "WATTDB_S3_ALLOW_HTTP", requires = "s3_bucket")]
    s3_allow_http: bool,
    /// Local cache of Parquet files read from S3, in DATA_DIR/cache, in MiB (0: none).
    #[arg(
        long,
        default_value_t = 1024,
        value_name = "MIB",
        requires = "s3_bucket"
    )]
    s3_cache_mib: u64,
    /// Timeout of one S3 request, in seconds (retried with backoff within 4x that).
    #[arg(
        long,
        default_value_t = 30,
        value_name = "SECONDS",
        requires = "s3_bucket"
    )]
    s3_timeout_s: u64,
    #[command(flatten)]
    mqtt: MqttArgs,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// JWT bearer tokens from an external identity provider, accepted besides API tokens.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "JWT")]
struct JwtArgs {
    /// Accept JWTs signed with this algorithm (and no other).
    #[arg(long, value_enum, value_name = "ALG", requires = "jwt_audience")]
    jwt_algorithm: Option<JwtAlgorithm>,
    /// HS256: a file with the shared secret; RS256/ES256: a PEM public key.
    #[arg(long, value_name = "FILE", requires = "jwt_algorithm")]
    jwt_key_file: Option<PathBuf>,
    /// A JWKS file (keys picked by kid), instead of --jwt-key-file.
    #[arg(
        long,
        value_name = "FILE",
        requires = "jwt_algorithm",
        conflicts_with = "jwt_key_file"
    )]
    jwt_jwks_file: Option<PathBuf>,
    /// The `aud` a JWT must carry.
    #[arg(long, value_name = "AUD", requires = "jwt_algorithm")]
    jwt_audience: Option<String>,
    /// The `iss` a JWT must carry.
    #[arg(long, value_name = "ISS", requires = "jwt_algorithm")]
    jwt_issuer: Option<String>,
    /// The claim with the scopes (space-separated or an array of read, write, admin).
    #[arg(long, default_value = "scope", value_name = "CLAIM")]
    jwt_scope_claim: String,
    /// The claim with the plug-id prefixes (an array or comma-separated; absent: all).
    #[arg(long, default_value = "wattdb_devices", value_name = "CLAIM")]
    jwt_devices_claim: String,
    /// Clock skew allowed for exp and nbf, in seconds.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    jwt_leeway_s: u64,
}

impl JwtArgs {
    fn config(&self) -> anyhow::Result<Option<JwtConfig>> {
        let Some(algorithm) = self.jwt_algorithm else {
            return Ok(None);
        };
        let Some(issuer) = self.jwt_issuer.clone() else {
            bail!("--jwt-algorithm needs --jwt-issuer");
        };
        Ok(Some(JwtConfig {
            algorithm,
            key_file: self.jwt_key_file.clone(),
            jwks_file: self.jwt_jwks_file.clone(),
            audience: self.jwt_audience.clone().unwrap_or_default(),
            issuer,
            scope_claim: self.jwt_scope_claim.clone(),
            devices_claim: self.jwt_devices_claim.clone(),
            leeway_s: self.jwt_leeway_s,
        }))
    }
}

/// MQTT ingest. Without --mqtt-url, WattDB starts an embedded broker on --mqtt-listen
/// and subscribes to it, so plugs can publish straight to WattDB.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "MQTT ingest")]
struct MqttArgs {
    /// Subscribe to this broker (mqtt://host:port, or mqtts://host:port for TLS)
    /// instead of starting the embedded one.
    #[arg(long, env = "WATTDB_MQTT_URL", value_name = "URL")]
    mqtt_url: Option<String>,
    /// Address of the embedded broker, started when no --mqtt-url is given.
    #[arg(
        long,
        env = "WATTDB_MQTT_LISTEN",
        default_value = "127.0.0.1:1883",
        value_name = "ADDR"
    )]
    mqtt_listen: SocketAddr,
    /// No MQTT ingest: neither the embedded broker nor a subscriber.
    #[arg(long, conflicts_with = "mqtt_url")]
    no_mqtt: bool,
    /// Let plugs connect to the embedded broker without a login. Otherwise (unless
    /// --without-auth) a plug logs in with any user name and, as password, an API
    /// token with the write scope for every plug.
    #[arg(long, conflicts_with = "mqtt_url")]
    mqtt_allow_anonymous: bool,
    /// Client id at the broker; it names WattDB's persistent session, so it must be
    /// unique per WattDB node and stable across restarts [default: wattdb-HOSTNAME].
    #[arg(long, env = "WATTDB_MQTT_CLIENT_ID", value_name = "ID")]
    mqtt_client_id: Option<String>,
    /// User name at the broker.
    #[arg(long, env = "WATTDB_MQTT_USERNAME", value_name = "USER")]
    mqtt_username: Option<String>,
    /// Password at the broker; prefer the environment variable (flags show in process
    /// lists).
    #[arg(
        long,
        env = "WATTDB_MQTT_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    mqtt_password: Option<String>,
    /// PEM file with the CA certificates that sign the broker's certificate
    /// (mqtts://); without it the system's roots are trusted.
    #[arg(long, value_name = "FILE")]
    mqtt_ca_file: Option<PathBuf>,
    /// Topic filter to subscribe to (repeatable) [default: one per route].
    #[arg(long = "mqtt-topic", value_name = "FILTER")]
    mqtt_topics: Vec<String>,
    /// Which topics carry which payloads, PATTERN=FORMAT (repeatable; replaces the
    /// defaults). FORMAT: smartplug-json, tasmota-sensor, tasmota-state, shelly-switch
    /// [default: smartplug/{device_id}/telemetry=smartplug-json,
    /// tele/{device_id}/SENSOR=tasmota-sensor, tele/{device_id}/STATE=tasmota-state,
    /// {device_id}/status/switch:0=shelly-switch].
    #[arg(long = "mqtt-route", value_name = "PATTERN=FORMAT")]
    mqtt_routes: Vec<Route>,
    /// Subscribe as $share/GROUP/FILTER, so that the WattDB nodes of a group split the
    /// fleet's messages.
    #[arg(long, value_name = "GROUP")]
    mqtt_share_group: Option<String>,
    /// QoS of the subscription. 1: a message is acknowledged once its readings are
    /// durable. 0: no acknowledgements; messages in flight at a crash are lost.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    mqtt_qos: u8,
    /// Start with a clean session: the broker forgets what it queued for WattDB while
    /// it was away.
    #[arg(long)]
    mqtt_clean_session: bool,
    /// Republish bad messages to TOPIC/REASON/ORIGINAL_TOPIC.
    #[arg(long, value_name = "TOPIC")]
    mqtt_dead_letter_topic: Option<String>,
    /// Largest payload decoded; larger messages are skipped as too_large.
    #[arg(long, default_value_t = 1024, value_name = "KIB")]
    mqtt_max_payload_kib: usize,
    /// Readings gathered into one write.
    #[arg(long, default_value_t = 8192, value_name = "READINGS")]
    mqtt_batch_readings: usize,
    /// Longest a message waits for its batch to fill before the write starts.
    #[arg(long, default_value_t = 5, value_name = "MS")]
    mqtt_batch_ms: u64,
}

#[derive(Debug, clap::Args)]
struct LoadgenCli {
    /// Base URL of the WattDB to load (plain http://; the load generator has no TLS);
    /// with --protocol mqtt, the WattDB to verify and read /metrics from.
    #[arg(long, default_value = "http://127.0.0.1:8181")]
    url: String,
    /// Write path: InfluxDB line protocol or JSON readings over HTTP, or smart-plug
    /// JSON messages published to --broker (which the WattDB at --url reads).
    #[arg(long, value_enum, default_value = "lp")]
    protocol: LoadProtocol,
    /// MQTT broker to publish to (--protocol mqtt; plain TCP). With --token, each
    /// connection logs in with it as password, as the embedded broker wants.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883", value_name = "URL")]
    broker: String,
    /// QoS of the published messages (--protocol mqtt).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Readings per MQTT message: 1 publishes one object on the plug's own topic,
    /// more publish JSON arrays on a gateway topic per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    per_message: u64,
    /// Simulated plugs (each reports once per simulated second).
    #[arg(long, default_value_t = 1000)]
    plugs: u32,
    /// Readings per second, open loop (default: one per plug per second).
    #[arg(long, conflicts_with = "max")]
    rate: Option<u64>,
    /// Flat out: send as fast as acknowledgements come back.
    #[arg(long)]
    max: bool,
    /// How long to run: `30s`, `5m`, `1h` (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Backfill: write the simulated readings of this past span, ending now, flat out
    /// (e.g. `24h`); `--duration`, `--rate` and `--max` do not apply.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with_all = ["rate", "max"])]
    backfill: Option<Duration>,
    /// Seed of the simulated fleet (same seed, same readings).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Readings per request, or per run of MQTT messages acknowledged together
    /// (default 5000 for lp, 1000 for json and mqtt; capped so each connection sends
    /// at least once a second in open loop).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Concurrent connections; each sends the readings of its own share of the plugs,
    /// in order.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Share of readings delivered late (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    late_share: f64,
    /// Share of readings sent twice (a plug resending).
    #[arg(long, default_value_t = 0.0)]
    duplicate_share: f64,
    /// Share of readings delivered out of order.
    #[arg(long, default_value_t = 0.0)]
    out_of_order_share: f64,
    /// Skip the verification query at the end.
    #[arg(long)]
    no_verify: bool,
    /// API token, sent as `Authorization: Bearer TOKEN`: write scope for the run,
    /// read scope for verification and the server's figures (admin has both).
    #[arg(long, env = "WATTDB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print one JSON object instead of the human summary (no progress line).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct QueryBenchCli {
    /// Base URL of the WattDB to ask.
    #[arg(long, default_value = "http://127.0.0.1:8181")]
    url: String,
    /// Plug of the single-plug questions (default: the first one).
    #[arg(long)]
    plug: Option<String>,
    /// Timed runs per question.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// API token (read scope), sent as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "WATTDB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn query_bench(cli: QueryBenchCli) -> anyhow::Result<()> {
    let report = wattdb_benches::queries::run(&wattdb_benches::queries::QueryBenchArgs {
        url: cli.url,
        plug: cli.plug,
        runs: cli.runs,
        token: cli.token,
    })
    .context("query benchmark failed")?;
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print_human();
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct DiskBenchCli {
    /// An existing directory on the disk to measure, normally the data directory;
    /// the benchmark's 64 MiB file is created there and removed afterwards.
    #[arg(long, default_value = "wattdb-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// How long to run (commits per second x seconds commits; longer if the disk
    /// cannot keep up).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    seconds: u32,
    /// Commits per second (a loaded WAL commits about once per write request).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    commits_per_s: u32,
    /// KiB written before each fdatasync, at most 65536 (WAL records take about 64
    /// bytes a reading).
    #[arg(long, default_value_t = 320, value_parser = clap::value_parser!(u64).range(1..=65536))]
    commit_kib: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn disk_bench(cli: DiskBenchCli) -> anyhow::Result<()> {
    let report = wattdb_benches::disk::run(&wattdb_benches::disk::DiskBenchArgs {
        dir: cli.data_dir,
        duration: Duration::from_secs(u64::from(cli.seconds)),
        commits_per_s: cli.commits_per_s,
        commit_bytes: usize::try_from(cli.commit_kib * 1024).context("--commit-kib")?,
    })
    .context("disk benchmark failed")?;
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print_human();
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
struct MqttBenchCli {
    /// The broker to publish to.
    #[arg(long, default_value = "mqtt://127.0.0.1:1883", value_name = "URL")]
    broker: String,
    /// Measure this WattDB (subscribed to the broker) instead of the broker alone.
    #[arg(long, value_name = "URL")]
    wattdb: Option<String>,
    /// QoS of the published messages (and of the null subscriber).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Readings per message: 1 publishes single objects, more publish JSON arrays.
    #[arg(long, default_value_t = 1)]
    per_message: usize,
    /// Simulated plugs.
    #[arg(long, default_value_t = 10_000)]
    plugs: u32,
    /// Simulated seconds: the run publishes plugs x seconds readings.
    #[arg(long, default_value_t = 30)]
    seconds: u32,
    /// Publishing connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// API token of --wattdb (read scope, all plugs).
    #[arg(long, env = "WATTDB_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print one JSON object instead of the human summary.
    #[arg(long)]
    json: bool,
}

/// The broker at `url` for `tool`, which publishes over plain TCP only.
fn plain_broker(url: &str, tool: &str) -> anyhow::Result<wattdb_ingest::subscriber::BrokerAddr> {
    let addr = wattdb_ingest::subscriber::BrokerAddr::parse(url)?;
    if addr.tls {
        bail!("{tool} publishes over plain TCP; give an mqtt:// broker URL");
    }
    Ok(addr)
}

fn mqtt_bench(cli: MqttBenchCli) -> anyhow::Result<()> {
    let addr = plain_broker(&cli.broker, "mqtt-bench")?;
    let args = wattdb_benches::mqtt::MqttBenchArgs {
        host: addr.host,
        port: addr.port,
        target: match cli.wattdb {
            Some(url) => wattdb_benches::mqtt::Target::Wattdb(url.trim_end_matches('/').to_owned()),
            None => wattdb_benches::mqtt::Target::Null,
        },
        qos: cli.qos,
        per_message: cli.per_message,
        plugs: cli.plugs,
        seconds: cli.seconds,
        publishers: cli.publishers,
        token: cli.token,
        ..Default::default()
    };
    let report = wattdb_benches::mqtt::run(&args).context("MQTT benchmark failed")?;
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print_human();
    }
    if report.lost.unwrap_or(0) > 0 || report.duplicated.unwrap_or(0) > 0 {
        std::process::exit(2);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LoadProtocol {
    Lp,
    Json,
    Mqtt,
}

/// A retention period; `None` keeps data forever.
type Retention = Option<Duration>;

fn parse_retention(s: &str) -> Result<Retention, String> {
    if s.trim() == "forever" {
        return Ok(None);
    }
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err("a retention of 0 would delete everything; use `forever` to keep data".into());
    }
    Ok(Some(d))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        "y" => n * 365.0 * 86_400.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}; use ms, s, m, h, d or y"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn loadgen(cli: LoadgenCli) -> anyhow::Result<()> {
    let mqtt = match cli.protocol {
        LoadProtocol::Mqtt => {
            let addr = plain_broker(&cli.broker, "loadgen")?;
            wattdb_benches::loadgen::MqttLoad {
                host: addr.host,
                port: addr.port,
                qos: cli.qos,
                per_message: usize::try_from(cli.per_message).context("--per-message")?,
                login: cli.token.clone().map(|t| ("wattdb-loadgen".to_owned(), t)),
            }
        }
        LoadProtocol::Lp | LoadProtocol::Json => {
            let default = wattdb_benches::loadgen::MqttLoad::default();
            let broker = format!("mqtt://{}:{}", default.host, default.port);
            if cli.broker != broker || cli.qos != 1 || cli.per_message != 1 {
                bail!("--broker, --qos and --per-message apply only to --protocol mqtt");
            }
            default
        }
    };
    let args = wattdb_benches::LoadgenArgs {
        url: cli.url.trim_end_matches('/').to_owned(),
        protocol: match cli.protocol {
            LoadProtocol::Lp => wattdb_benches::Protocol::Lp,
            LoadProtocol::Json => wattdb_benches::Protocol::Json,
            LoadProtocol::Mqtt => wattdb_benches::Protocol::Mqtt,
        },
        mqtt,
        plugs: cli.plugs,
        rate: cli.rate,
        max: cli.max,
        duration: cli.duration,
        seed: cli.seed,
        batch_size: cli.batch_size,
        connections: cli.connections.max(1),
        late_share: cli.late_share,
        duplicate_share: cli.duplicate_share,
        out_of_order_share: cli.out_of_order_share,
        verify: !cli.no_verify,
        token: cli.token,
        progress: !cli.json,
        backfill: cli.backfill.map(|span| {
            let end = wattdb_api::now_ns();
            let span = i64::try_from(span.as_nanos()).unwrap_or(i64::MAX);
            (end.saturating_sub(span), end)
        }),
        ..wattdb_benches::LoadgenArgs::default()
    };
    let report = wattdb_benches::run(args).context("load generator failed")?;
    if cli.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        report.print_human();
    }
    let clean = report.lost.unwrap_or(0) == 0 && report.duplicated.unwrap_or(0) == 0;
    if !clean {
        std::process::exit(2);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum WalCommand {
    /// List damaged WAL segments without changing anything (exit code 1 if any).
    Check {
        #[arg(long, default_value = "wattdb-data", value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Rewrite damaged segments with every record that still checks out; the
    /// originals move to DIR/wal/quarantine/. Run it with the server stopped.
    Repair {
        #[arg(long, default_value = "wattdb-data", value_name = "DIR")]
        data_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cmd = Cli::command();
    let (argv, sources) = config::layer(&cmd, std::env::args_os().collect())?;
    let layered = sources.values().any(|s| s != "flag" && s != "default");
    let matches = match cmd.clone().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            if layered {
                eprintln!(
                    "note: settings from WATTDB_* variables and the config file are checked as the flags they name"
                );
            }
            e.exit()
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Config(_) => {
            config::print(&cmd, &matches, &sources);
            Ok(())
        }
        Command::Token { command } => token_command(command),
        Command::Serve(args) => {
            init_tracing(args.log_format);
            #[cfg(all(target_os = "linux", not(target_env = "musl")))]
            allocator::background_threads();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("wattdb")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(*args))
        }
        Command::Loadgen(cli) => loadgen(cli),
        Command::MqttBench(cli) => mqtt_bench(cli),
        Command::QueryBench(cli) => query_bench(cli),
        Command::DiskBench(cli) => disk_bench(cli),
        Command::Wal { command } => {
            init_tracing(LogFormat::Text);
            wal_command(command)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rumqttd logs every client connection at info.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            Some(wattdb_api::tls::server_config(cert, key).map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let auth = Auth::start(
        &args.data_dir,
        AuthConfig {
            disabled: args.without_auth,
            rate_limit_rps: args.rate_limit_rps,
            jwt: args.jwt.config()?,
        },
    )
    .map_err(anyhow::Error::msg)
    .context("cannot set up authentication")?;
    let store = match &args.s3_bucket {
        None => None,
        Some(bucket) => {
            let config = StoreConfig::S3(S3Config {
                endpoint: args.s3_endpoint.clone(),
                region: args.s3_region.clone(),
                bucket: bucket.clone(),
                prefix: args.s3_prefix.clone(),
                allow_http: args.s3_allow_http,
                request_timeout: Duration::from_secs(args.s3_timeout_s.max(1)),
                ..S3Config::default()
            });
            let store = Store::open(&config).context("invalid S3 settings")?;
            let store = if args.s3_cache_mib > 0 {
                store
                    .with_read_cache(args.data_dir.join("cache"), args.s3_cache_mib << 20)
                    .context("cannot create the S3 read cache")?
            } else {
                store
            };
            Some(store)
        }
    };
    let engine_config = EngineConfig {
        data_dir: args.data_dir.clone(),
        group_commit_window: Duration::from_millis(args.group_commit_ms),
        wal_segment_size: args.wal_segment_mib.max(1) << 20,
        wal_spare_segments: args.wal_spare_segments,
        queue_capacity: args.write_queue.max(1),
        max_buffer_bytes: args.max_buffer_mib << 20,
        store,
        persist_interval: Duration::from_secs(args.persist_interval_s.max(1)),
        persist_bytes: args.persist_mib.max(1) << 20,
        compaction: CompactionConfig {
            min_files: args.compact_min_files.max(2),
            small_file_bytes: args.compact_small_mib.max(1) << 20,
            ..CompactionConfig::default()
        },
        rollups: RollupSettings {
            math: RollupConfig {
                gap_cap_ns: i64::try_from(args.rollup_gap_cap.as_nanos()).unwrap_or(i64::MAX),
            },
            horizon: args.late_horizon,
        },
        retention: RetentionConfig {
            raw: args.retention_raw,
            minute: args.retention_1m,
            hour: args.retention_1h,
            day: args.retention_1d,
        },
        ..EngineConfig::default()
    };
    let engine = tokio::task::spawn_blocking(move || Engine::open(engine_config))
        .await
        .context("engine start panicked")?
        .with_context(|| format!("cannot open data directory {}", args.data_dir.display()))?;
    let query = QueryEngine::new(
        engine.clone(),
        QueryConfig {
            memory_limit: args.query_memory_mib << 20,
            deadline: Duration::from_secs(args.query_timeout_s.max(1)),
            ..QueryConfig::default()
        },
    );
    let limits = QueryLimits {
        concurrent: args.max_concurrent_queries.max(1),
        max_rows: args.max_result_rows.max(1),
    };
    let mut state = AppState::new(engine.clone(), query, Arc::clone(&auth), limits);
    state.export_deadline = Duration::from_secs(args.export_timeout_s.max(1));
    state.live_send_timeout = Duration::from_secs(args.live_send_timeout_s.max(1));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let broker_auth =
        (!auth.disabled() && !args.mqtt.mqtt_allow_anonymous).then(|| Arc::clone(&auth));
    let mqtt = match mqtt_subscriber(&args.mqtt, &engine, broker_auth)? {
        Some(subscriber) => {
            state.mqtt = Some(subscriber.stats());
            Some(run_subscriber(subscriber, stopped())?)
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.http_addr))?;
    let addr = listener.local_addr().context("listener has no address")?;
    if auth.disabled() {
        warn!(
            "running WITHOUT AUTHENTICATION (--without-auth): anyone who can reach {addr} can read and write every plug's data"
        );
    } else if !auth.has_credentials() {
        warn!(
            "no API tokens yet: every request but /health gets 401. Create one (the server picks it up at once) with: wattdb token create --data-dir {} --scope admin",
            args.data_dir.display()
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(%addr, data_dir = %args.data_dir.display(), "WattDB is ready");
    // Tests and scripts read this line to learn the port.
    println!("wattdb listening on {scheme}://{addr}");
    let api = ApiConfig {
        max_body_bytes: args.max_body_bytes,
    };
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    match tls {
        Some(config) => {
            let listener = wattdb_api::tls::TlsListener::new(listener, config)
                .context("cannot start the TLS listener")?;
            wattdb_api::serve(listener, state, &api, stopped()).await
        }
        None => wattdb_api::serve(listener, state, &api, stopped()).await,
    }
    .context("HTTP server failed")?;
    if let Some(mqtt) = mqtt {
        match mqtt.await {
            Ok(Ok(())) => info!("MQTT subscriber stopped"),
            Ok(Err(error)) => warn!(%error, "MQTT subscriber failed"),
            Err(_) => warn!("MQTT subscriber panicked"),
        }
    }
    info!("HTTP server stopped; committing queued writes");
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .context("engine shutdown panicked")?;
    info!("WattDB stopped");
    Ok(())
}

/// Runs the subscriber on a thread of its own with a single-threaded runtime: its two
/// tasks (the event-loop pump and the decode-and-write loop) hand every message from one
/// to the other, and on one thread that costs no wake-up of another worker (README,
/// "MQTT, through a real broker"). The receiver gets the subscriber's result, or an
/// error if it panicked.
fn run_subscriber(
    subscriber: Subscriber<EngineSink>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<Result<(), SubscriberError>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the MQTT subscriber's runtime")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("wattdb-mqtt".into())
        .spawn(move || {
            let _ = tx.send(runtime.block_on(subscriber.run(stop)));
        })
        .context("cannot start the MQTT subscriber's thread")?;
    Ok(rx)
}

/// The MQTT subscriber `serve` runs, after starting the embedded broker if no broker
/// URL is given; `None` with --no-mqtt.
fn mqtt_subscriber(
    args: &MqttArgs,
    engine: &Engine,
    broker_auth: Option<Arc<Auth>>,
) -> anyhow::Result<Option<Subscriber<EngineSink>>> {
    if args.no_mqtt {
        return Ok(None);
    }
    let max_payload_bytes = args.mqtt_max_payload_kib.max(1) << 10;
    let mut login = (args.mqtt_username.clone(), args.mqtt_password.clone());
    let url = match &args.mqtt_url {
        Some(url) => url.clone(),
        None => {
            let broker_login = match broker_auth {
                Some(auth) => {
                    let login_of_wattdb = BrokerLogin {
                        auth,
                        internal_user: "wattdb-internal".to_owned(),
                        internal_password: random_hex(24)?,
                    };
                    login = (
                        Some(login_of_wattdb.internal_user.clone()),
                        Some(login_of_wattdb.internal_password.clone()),
                    );
                    Some(login_of_wattdb)
                }
                None => None,
            };
            EmbeddedBroker {
                listen: args.mqtt_listen,
                max_payload_bytes: max_payload_bytes + (64 << 10),
                max_connections: 10_000,
                login: broker_login,
            }
            .start()?;
            let mut connect = args.mqtt_listen;
            if connect.ip().is_unspecified() {
                connect.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            info!(listen = %args.mqtt_listen, "embedded MQTT broker started");
            format!("mqtt://{connect}")
        }
    };
    let router = if args.mqtt_routes.is_empty() {
        TopicRouter::default()
    } else {
        TopicRouter::new(args.mqtt_routes.clone())
    };
    let config = SubscriberConfig {
        url,
        client_id: args
            .mqtt_client_id
            .clone()
            .unwrap_or_else(default_client_id),
        username: login.0,
        password: login.1,
        ca_file: args.mqtt_ca_file.clone(),
        filters: args.mqtt_topics.clone(),
        share_group: args.mqtt_share_group.clone(),
        qos: if args.mqtt_qos == 0 {
            rumqttc::QoS::AtMostOnce
        } else {
            rumqttc::QoS::AtLeastOnce
        },
        clean_session: args.mqtt_clean_session,
        dead_letter_topic: args.mqtt_dead_letter_topic.clone(),
        max_batch_readings: args.mqtt_batch_readings.max(1),
        max_batch_delay: Duration::from_millis(args.mqtt_batch_ms),
        decoder: MqttDecoderConfig {
            router,
            max_payload_bytes,
            ..MqttDecoderConfig::default()
        },
        ..SubscriberConfig::default()
    };
    let subscriber = Subscriber::new(config, EngineSink(engine.clone()))?;
    Ok(Some(subscriber))
}

/// `wattdb-HOSTNAME`, or `wattdb` when the host name cannot be read.
fn default_client_id() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(host) if !host.trim().is_empty() => format!("wattdb-{}", host.trim()),
        _ => "wattdb".to_owned(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            warn!(%error, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("interrupt: shutting down"),
    }
}

fn token_command(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            data_dir,
            scopes,
            devices,
            name,
            expires_in,
            json,
        } => {
            let store = TokenStore::new(&data_dir);
            let (token, info) = store.create(NewToken {
                name,
                scopes,
                devices,
                expires_in,
            })?;
            if json {
                let mut v = serde_json::to_value(&info)?;
                v["token"] = serde_json::json!(token);
                println!("{v}");
            } else {
                println!("{token}");
                eprintln!(
                    "created token {} ({}); it is shown only this once: keep it safe",
                    info.id,
                    describe_token(&info)
                );
            }
            Ok(())
        }
        TokenCommand::List { data_dir, json } => {
            let infos = TokenStore::new(&data_dir).infos()?;
            if json {
                println!("{}", serde_json::json!({ "tokens": infos }));
                return Ok(());
            }
            if infos.is_empty() {
                println!("no tokens in {}", data_dir.display());
            }
            for i in &infos {
                println!(
                    "{}  {}  created {}{}",
                    i.id,
                    describe_token(i),
                    i.created,
                    i.name
                        .as_deref()
                        .map(|n| format!("  {n:?}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { data_dir, id } => {
            if TokenStore::new(&data_dir).revoke(&id)? {
                println!("revoked token {id}");
                Ok(())
            } else {
                bail!("no token with id {id:?} in {}", data_dir.display())
            }
        }
    }
}

/// `read,write; plugs house1-*; expires …` for people.
fn describe_token(i: &TokenInfo) -> String {
    let scopes: Vec<&str> = i.scopes.iter().map(|s| s.name()).collect();
    let plugs = if i.devices.is_empty() {
        "all plugs".to_owned()
    } else {
        format!("plugs {}*", i.devices.join("*, "))
    };
    let expires = match &i.expires {
        Some(t) => format!("; expires {t}"),
        None => String::new(),
    };
    format!("{}; {plugs}{expires}", scopes.join(","))
}

fn wal_command(command: WalCommand) -> anyhow::Result<()> {
    match command {
        WalCommand::Check { data_dir } => {
            let dir = data_dir.join("wal");
            let damage =
                wal::check(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
            if damage.is_empty() {
                println!("WAL in {} is intact", dir.display());
                return Ok(());
            }
            for d in &damage {
                println!(
                    "segment {}: {} at offset {} ({} valid records before, {} after)",
                    d.segment, d.damage, d.offset, d.records_before, d.records_after
                );
            }
            std::process::exit(1);
        }
        WalCommand::Repair { data_dir } => {
            let dir = data_dir.join("wal");
            let repaired =
                wal::repair(&dir).with_context(|| format!("cannot repair {}", dir.display()))?;
            if repaired.is_empty() {
                println!("WAL in {} is intact; nothing to repair", dir.display());
            }
            for d in &repaired {
                println!(
                    "segment {}: {} at offset {}; kept {} records, original moved to {}",
                    d.segment,
                    d.damage,
                    d.offset,
                    d.records_before + d.records_after,
                    dir.join("quarantine").display()
                );
            }
            Ok(())
        }
    }
}
