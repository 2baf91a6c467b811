//! `warren events`: runc's JSON lines, {"type":"stats"|"oom","id":ID,"data":STATS}.

use std::io::Write;

use anyhow::Result;
use serde::Serialize;
use warren::cgroups::stats::Stats;
use warren::container::Runtime;
use warren::events::{watch, Event};

use crate::cli::EventsArgs;

#[derive(Serialize)]
struct Record<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Stats>,
}

pub fn events(rt: &Runtime, args: &EventsArgs) -> Result<i32> {
    if args.stats {
        let stats = rt.stats(&args.id)?;
        print_line(&Record { kind: "stats", id: &args.id, data: Some(&stats) })?;
        return Ok(0);
    }
    watch(rt, &args.id, args.interval, |event| {
        let record = match &event {
            Event::Stats(stats) => Record { kind: "stats", id: &args.id, data: Some(stats) },
            Event::Oom => Record { kind: "oom", id: &args.id, data: None },
        };
        // A reader that went away (EPIPE) ends the watch.
        print_line(&record).is_ok()
    })?;
    Ok(0)
}

fn print_line(record: &Record) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, record)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}
