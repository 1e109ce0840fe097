//! The command: parse arguments, run the scenario under a hard time limit,
//! print the summary on stderr and the JSON result on stdout.
//!
//! Exit status: 0 the run completed (whatever it measured: losses and errors
//! are in the result), 1 the run could not be carried out, 2 bad arguments,
//! 3 the `--timeout` was reached, 130 interrupted.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use singyeong_loadtest::args::{Args, Scenario};
use singyeong_loadtest::report::Report;
use singyeong_loadtest::scenario::proxy::ProxyRunReport;
use singyeong_loadtest::scenario::queue::QueueRunReport;
use singyeong_loadtest::scenario::update::UpdateRunReport;
use singyeong_loadtest::stop::StopSwitch;
use singyeong_loadtest::{clock, html, processes, scenario};

/// How long connections get to close after the run.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    clock::init();
    let args = Args::parse();
    let gateways = match args.validate() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |w| w as usize,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async {
        let mut switch = StopSwitch::new();
        let outcome = tokio::select! {
            result = run(&args, &gateways, workers, &switch) => Outcome::Done(result),
            _ = tokio::time::sleep(args.timeout()) => Outcome::TimedOut,
            _ = tokio::signal::ctrl_c() => Outcome::Interrupted,
        };
        let closed = switch.stop_and_wait(CLOSE_GRACE).await;
        if !closed {
            eprintln!("warning: some connections did not close within {CLOSE_GRACE:?}");
        }
        match outcome {
            Outcome::Done(Ok(Output::Full(report))) => {
                emit(&args, &*report, report.summary(), |json| {
                    html::render(&report, json)
                })
            }
            Outcome::Done(Ok(Output::Queue(report))) => {
                emit(&args, &*report, report.summary(), |json| report.html(json))
            }
            Outcome::Done(Ok(Output::Proxy(report))) => {
                emit(&args, &*report, report.summary(), |json| report.html(json))
            }
            Outcome::Done(Ok(Output::Update(report))) => {
                emit(&args, &*report, report.summary(), |json| report.html(json))
            }
            Outcome::Done(Err(e)) => {
                eprintln!("error: {e}");
                1
            }
            Outcome::TimedOut => {
                eprintln!("error: --timeout of {} s reached; stopped", args.timeout);
                3
            }
            Outcome::Interrupted => {
                eprintln!("interrupted; stopped");
                130
            }
        }
    });
    // Tasks still closing are abandoned; the process exit closes their sockets.
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(code)
}

async fn run(
    args: &Args,
    gateways: &[singyeong_loadtest::args::Gateway],
    workers: usize,
    switch: &StopSwitch,
) -> Result<Output, scenario::RunError> {
    // Queue, proxy and update talk to one server (validate() refuses more).
    let gateway = &gateways[0];
    let coordinating = args.processes > 1 && args.worker.is_none();
    Ok(match (args.scenario, coordinating) {
        (Scenario::Queue, true) => {
            Output::Queue(Box::new(processes::coordinate_queue(args).await?))
        }
        (Scenario::Queue, false) => Output::Queue(Box::new(
            scenario::queue::run(args, gateway, workers).await?,
        )),
        (Scenario::Proxy, true) => {
            Output::Proxy(Box::new(processes::coordinate_proxy(args).await?))
        }
        (Scenario::Proxy, false) => Output::Proxy(Box::new(
            scenario::proxy::run(args, gateway, workers).await?,
        )),
        // validate() refuses --processes for update.
        (Scenario::Update, _) => Output::Update(Box::new(
            scenario::update::run(args, gateway, workers).await?,
        )),
        (_, true) => Output::Full(Box::new(processes::coordinate(args).await?)),
        (_, false) => Output::Full(Box::new(
            scenario::run(args, gateways, workers, switch).await?,
        )),
    })
}

/// What a run produced: the common report, or a queue, proxy or update
/// run's own.
enum Output {
    Full(Box<Report>),
    Queue(Box<QueueRunReport>),
    Proxy(Box<ProxyRunReport>),
    Update(Box<UpdateRunReport>),
}

enum Outcome {
    Done(Result<Output, scenario::RunError>),
    TimedOut,
    Interrupted,
}

/// Prints the summary and the JSON, and writes the HTML page `html` makes
/// of the JSON; returns the exit status. A worker prints only its result
/// line for the coordinator.
fn emit<R: serde::Serialize>(
    args: &Args,
    report: &R,
    summary: String,
    html: impl FnOnce(&str) -> String,
) -> u8 {
    if args.worker.is_some() {
        return match processes::result_line(report) {
            Ok(line) => {
                println!("{line}");
                0
            }
            Err(e) => {
                eprintln!("error: cannot encode the result: {e}");
                1
            }
        };
    }
    let Some(json) = print_and_save(args, report, summary) else {
        return 1;
    };
    if let Some(path) = &args.html
        && let Err(e) = std::fs::write(path, html(&json))
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return 1;
    }
    0
}

/// Prints the summary (stderr) and the JSON (stdout, and `--json`);
/// returns the JSON, or `None` after saying what failed.
fn print_and_save(args: &Args, report: &impl serde::Serialize, summary: String) -> Option<String> {
    eprint!("{summary}");
    let json = match serde_json::to_string_pretty(report) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: cannot encode the result: {e}");
            return None;
        }
    };
    println!("{json}");
    if let Some(path) = &args.json
        && let Err(e) = std::fs::write(path, format!("{json}\n"))
    {
        eprintln!("error: cannot write {}: {e}", path.display());
        return None;
    }
    Some(json)
}
