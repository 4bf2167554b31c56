//! A followed job log on a terminal: each line printed with its node in a colour of its
//! own, and below them one progress line per node (what it does now and for how long,
//! with a bar while an image or the node agent is uploaded), so the long steps (host
//! boot, uploads, VM boots) are never silent. The progress lines are drawn on stderr
//! and only when it is a terminal: pipes and files get the log lines alone.
//!
//! What a node does is read from the log lines the runner writes anyway: `start: boot`
//! and `end: boot (9.1 s)` around each pipeline action, `... upload: 50% (4.0 of 8.0
//! MiB)` during a transfer, `queued: ...` while the job waits.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::out;
use crate::summary::Paint;

/// ANSI colours for nodes, in the order nodes first appear.
const NODE_COLOURS: [u8; 6] = [36, 32, 33, 35, 34, 31];

/// What to do with each line of a followed log.
pub struct Follower {
    /// Print the lines (`wait` only shows progress).
    print: bool,
    /// Only this node's lines.
    node: Option<String>,
    paint: Paint,
    /// Nodes in the order they first appeared: their colour is their index.
    seen: Vec<String>,
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    /// One progress line per node (`None`: the job itself, e.g. while queued).
    lines: BTreeMap<Option<String>, ProgressBar>,
    /// Whether stdout shares the terminal, so printing must lift the bars first.
    stdout_on_terminal: bool,
}

impl Follower {
    /// `print`: the log lines go to stdout; `progress`: progress lines on stderr when it
    /// is a terminal.
    pub fn new(print: bool, node: Option<&str>, progress: bool) -> Self {
        let bars = (progress && std::io::stderr().is_terminal()).then(|| Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)),
            lines: BTreeMap::new(),
            stdout_on_terminal: std::io::stdout().is_terminal(),
        });
        Self {
            print,
            node: node.map(str::to_string),
            paint: Paint::for_stdout(),
            seen: Vec::new(),
            bars,
        }
    }

    /// One line of the log (NDJSON, already parsed).
    pub fn line(&mut self, line: &Value) {
        let node = line["node"].as_str();
        if self
            .node
            .as_deref()
            .is_some_and(|wanted| node != Some(wanted))
        {
            return;
        }
        let colour_index = node.map(|name| self.colour_index(name));
        if let Some(bars) = &mut self.bars {
            bars.update(node, colour_index, line["msg"].as_str().unwrap_or(""));
        }
        if self.print {
            let text = self.render(line, colour_index);
            match &self.bars {
                Some(bars) if bars.stdout_on_terminal => bars.multi.suspend(|| out::line(&text)),
                _ => out::line(&text),
            }
        }
    }

    /// The log ended: the progress lines go away, leaving the printed log as it was.
    pub fn finish(&mut self) {
        if let Some(bars) = self.bars.take() {
            for bar in bars.lines.values() {
                bar.finish_and_clear();
            }
            let _ = bars.multi.clear();
        }
    }

    fn colour_index(&mut self, name: &str) -> usize {
        match self.seen.iter().position(|n| n == name) {
            Some(index) => index,
            None => {
                self.seen.push(name.to_string());
                self.seen.len() - 1
            }
        }
    }

    /// `12:00:01.234 [server] info: start: boot`.
    fn render(&self, line: &Value, colour_index: Option<usize>) -> String {
        let time = line["dt"].as_str().unwrap_or("").get(11..23).unwrap_or("");
        let node = match (line["node"].as_str(), colour_index) {
            (Some(name), Some(index)) if self.paint.colour => {
                let code = NODE_COLOURS[index % NODE_COLOURS.len()];
                format!(" \x1b[1;{code}m[{name}]\x1b[0m")
            }
            (Some(name), _) => format!(" [{name}]"),
            (None, _) => String::new(),
        };
        let level = line["lvl"].as_str().unwrap_or("?");
        let level = match level {
            "error" => self.paint.bad(level),
            "warning" => self.paint.warn(level),
            _ => level.to_string(),
        };
        format!(
            "{time}{node} {level}: {}",
            line["msg"].as_str().unwrap_or("")
        )
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What a log message says a node is doing now.
#[derive(Debug, PartialEq)]
enum Doing<'a> {
    /// A pipeline action started.
    Started(&'a str),
    /// It ended (after so many seconds).
    Ended(&'a str),
    /// A transfer: what, bytes done, bytes in all.
    Transfer(&'a str, u64, u64),
    /// The job waits in the queue, and why.
    Queued(&'a str),
}

const MIB: f64 = 1_048_576.0;

fn doing(msg: &str) -> Option<Doing<'_>> {
    if let Some(action) = msg.strip_prefix("start: ") {
        return Some(Doing::Started(action));
    }
    if let Some(rest) = msg.strip_prefix("end: ") {
        return Some(Doing::Ended(
            rest.split_once(" (").map_or(rest, |(action, _)| action),
        ));
    }
    if let Some(reason) = msg.strip_prefix("queued: ") {
        return Some(Doing::Queued(reason));
    }
    // `kernel upload: 50% (4.0 of 8.0 MiB)`, as the runner's progress logger writes it.
    let (what, rest) = msg.split_once(": ")?;
    let (_, sizes) = rest.split_once("% (")?;
    let sizes = sizes.strip_suffix(" MiB)")?;
    let (done, total) = sizes.split_once(" of ")?;
    let mib = |text: &str| text.parse::<f64>().ok().map(|m| (m * MIB) as u64);
    Some(Doing::Transfer(what, mib(done)?, mib(total)?))
}

impl Bars {
    fn update(&mut self, node: Option<&str>, colour_index: Option<usize>, msg: &str) {
        let Some(doing) = doing(msg) else {
            return;
        };
        let key = node.map(str::to_string);
        let bar = match self.lines.get(&key) {
            Some(bar) => bar.clone(),
            None => {
                let bar = self.multi.add(ProgressBar::new_spinner());
                let code = NODE_COLOURS[colour_index.unwrap_or(0) % NODE_COLOURS.len()];
                bar.set_style(spinner_style(code));
                bar.set_prefix(node.unwrap_or("job").to_string());
                bar.enable_steady_tick(Duration::from_millis(100));
                self.lines.insert(key, bar.clone());
                bar
            }
        };
        let code = NODE_COLOURS[colour_index.unwrap_or(0) % NODE_COLOURS.len()];
        match doing {
            Doing::Started(action) => {
                bar.set_style(spinner_style(code));
                bar.set_message(action.to_string());
                bar.reset_elapsed();
            }
            Doing::Ended(action) => {
                bar.set_style(spinner_style(code));
                bar.set_message(format!("{action} done"));
            }
            Doing::Queued(reason) => {
                bar.set_style(spinner_style(code));
                bar.set_message(format!("queued: {reason}"));
            }
            Doing::Transfer(what, done, total) => {
                bar.set_style(transfer_style(code));
                bar.set_message(what.to_string());
                bar.set_length(total);
                bar.set_position(done.min(total));
            }
        }
    }
}

fn spinner_style(code: u8) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{spinner:.cyan}} \x1b[1;{code}m[{{prefix}}]\x1b[0m {{wide_msg}} {{elapsed:>5}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn transfer_style(code: u8) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{spinner:.cyan}} \x1b[1;{code}m[{{prefix}}]\x1b[0m {{msg}} [{{bar:30.cyan/blue}}] \
         {{bytes}}/{{total_bytes}} {{percent:>3}}%"
    ))
    .map(|style| style.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_messages_say_what_a_node_does() {
        assert_eq!(doing("start: boot"), Some(Doing::Started("boot")));
        assert_eq!(doing("end: boot (9.120 s)"), Some(Doing::Ended("boot")));
        assert_eq!(
            doing("queued: waiting for a free kvm"),
            Some(Doing::Queued("waiting for a free kvm"))
        );
        assert_eq!(
            doing("image upload: 50% (4.0 of 8.0 MiB)"),
            Some(Doing::Transfer("image upload", 4 << 20, 8 << 20))
        );
        assert_eq!(doing("lava-test-case ping --result pass"), None);
        assert_eq!(doing("rate: 50% (of nothing)"), None);
    }

    #[test]
    fn lines_of_other_nodes_are_left_out() {
        let mut follower = Follower::new(false, Some("client"), false);
        follower.line(&serde_json::json!({"node": "server", "msg": "start: boot"}));
        follower.line(&serde_json::json!({"node": "client", "msg": "start: boot"}));
        assert_eq!(follower.seen, ["client"]);
    }
}
