//! `wasmwire top`: a live view of a running host, drawn with ratatui from the `stats`
//! answers of its channel 0 (the same figures the metrics endpoint serves).
//!
//! [`View`] is the pure part — it takes successive [`HostStats`] and works out rates from
//! the host's own uptime, so that a frame depends only on what the host said (and can be
//! snapshot-tested on ratatui's `TestBackend`); [`run`] is the terminal loop around it.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use std::collections::HashMap;
use wasmwire::wire::{HostStats, InstanceFigures, ServiceState};

/// What `top` shows: the latest figures, and calls per second since the previous ones.
#[derive(Debug, Default)]
pub struct View {
    /// The host as the user named it.
    addr: String,
    stats: HostStats,
    /// Calls per second of each instance, by name (absent until a second sample).
    rates: HashMap<String, f64>,
}

impl View {
    /// An empty view of the host at `addr`.
    pub fn new(addr: &str) -> View {
        View {
            addr: addr.to_string(),
            ..View::default()
        }
    }

    /// Takes a new sample; rates are the counters' growth over the host's uptime between
    /// this sample and the previous one.
    pub fn update(&mut self, stats: HostStats) {
        let elapsed_ms = stats.uptime_ms.saturating_sub(self.stats.uptime_ms);
        let before: HashMap<&str, u64> = self
            .stats
            .instances
            .iter()
            .map(|i| (i.name.as_str(), i.calls))
            .collect();
        let had_sample = self.stats.uptime_ms > 0 || !self.stats.instances.is_empty();
        self.rates = if had_sample && elapsed_ms > 0 {
            stats
                .instances
                .iter()
                .filter_map(|i| {
                    let prev = before.get(i.name.as_str())?;
                    let grown = i.calls.saturating_sub(*prev);
                    Some((i.name.clone(), grown as f64 * 1000.0 / elapsed_ms as f64))
                })
                .collect()
        } else {
            HashMap::new()
        };
        self.stats = stats;
    }

    /// Draws the view over the whole frame.
    pub fn render(&self, frame: &mut Frame) {
        let s = &self.stats;
        // Blocks as tall as their rows (a tall terminal leaves the rest empty at the bottom).
        let [head, instances, peers, _, foot] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Max(s.instances.len() as u16 + 3),
            Constraint::Length((s.peers.len() as u16).clamp(1, 8) + 3),
            Constraint::Fill(1),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        // Name and address columns as wide as their longest entry: on a wide terminal the
        // figures stay next to the names they belong to.
        let name_width = s
            .instances
            .iter()
            .map(|i| i.name.len())
            .max()
            .unwrap_or(0)
            .clamp(14, 40) as u16;
        let addr_width = s
            .peers
            .iter()
            .map(|p| p.addr.len())
            .max()
            .unwrap_or(0)
            .clamp(15, 40) as u16;

        let awake: u64 = s.instances.iter().map(|i| i.awake).sum();
        let host = if s.host.is_empty() { "?" } else { &s.host };
        frame.render_widget(
            Paragraph::new(Line::from(format!(
                "wasmwire top — {} ({})   up {}   awake {}   refused handshakes {}   stalls {}",
                self.addr,
                short_id(host),
                uptime(s.uptime_ms),
                awake,
                s.refused_handshakes,
                s.stalls.stream_credit
                    + s.stalls.send_blocked
                    + s.stalls.mailbox_full
                    + s.stalls.control_blocked
            )))
            .style(Style::new().add_modifier(Modifier::BOLD)),
            head,
        );

        let header = Row::new(
            [left("INSTANCE"), left("STATE")].into_iter().chain(
                [
                    "CALLS/S", "CALLS", "ERRORS", "TRAPS", "RESTARTS", "MAILBOX", "MEMORY",
                    "SESSIONS",
                ]
                .map(right),
            ),
        )
        .style(Style::new().add_modifier(Modifier::REVERSED));
        let rows = s.instances.iter().map(|i| {
            Row::new([
                left(i.name.clone()),
                left(state(i)),
                right(
                    self.rates
                        .get(&i.name)
                        .map_or_else(|| "-".to_string(), |r| format!("{r:.1}")),
                ),
                right(i.calls.to_string()),
                right(i.errors.to_string()),
                right(i.traps.to_string()),
                right(i.restarts.to_string()),
                right(i.mailbox.to_string()),
                right(size(i.memory)),
                right(i.sessions.to_string()),
            ])
        });
        let more = s.total_instances.saturating_sub(s.instances.len() as u64);
        let title = if more > 0 {
            format!(" instances ({more} more not listed) ")
        } else {
            " instances ".to_string()
        };
        frame.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Length(name_width),
                    Constraint::Length(9),
                    Constraint::Length(8),
                    Constraint::Length(9),
                    Constraint::Length(6),
                    Constraint::Length(5),
                    Constraint::Length(8),
                    Constraint::Length(7),
                    Constraint::Length(10),
                    Constraint::Length(8),
                ],
            )
            .header(header)
            .flex(ratatui::layout::Flex::Start)
            .block(Block::bordered().title(title)),
            instances,
        );

        let header = Row::new(
            [left("PEER"), left("ROLE"), left("ADDRESS")]
                .into_iter()
                .chain(["RTT", "MSGS IN", "MSGS OUT", "BYTES IN", "BYTES OUT"].map(right)),
        )
        .style(Style::new().add_modifier(Modifier::REVERSED));
        let rows = s.peers.iter().map(|p| {
            Row::new([
                left(short_id(&p.peer).to_string()),
                left(p.role.as_str()),
                left(p.addr.clone()),
                right(format!("{:.2} ms", p.rtt_us as f64 / 1000.0)),
                right(p.messages_in.to_string()),
                right(p.messages_out.to_string()),
                right(size(p.bytes_in)),
                right(size(p.bytes_out)),
            ])
        });
        frame.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Length(13),
                    Constraint::Length(6),
                    Constraint::Length(addr_width),
                    Constraint::Length(9),
                    Constraint::Length(8),
                    Constraint::Length(8),
                    Constraint::Length(10),
                    Constraint::Length(10),
                ],
            )
            .header(header)
            .flex(ratatui::layout::Flex::Start)
            .block(Block::bordered().title(" peers ")),
            peers,
        );
        frame.render_widget(Paragraph::new("q or Esc quits"), foot);
    }
}

/// A left-aligned cell.
fn left<'a>(text: impl Into<String>) -> Cell<'a> {
    Cell::from(text.into())
}

/// A right-aligned cell (figures line up on their last digit).
fn right<'a>(text: impl Into<String>) -> Cell<'a> {
    Cell::from(Line::from(text.into()).right_aligned())
}

/// A keyed class shows its live and awake keys in place of a state.
fn state(i: &InstanceFigures) -> String {
    if i.state == ServiceState::Keyed {
        format!("{}/{} keys", i.awake, i.live)
    } else {
        i.state.to_string()
    }
}

/// The first 12 characters of a peer id (enough to tell hosts apart on a screen).
fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `1h02m`, `3m05s`, `12s`.
fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}

/// Bytes in binary units, one decimal.
fn size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// Runs the live view until `q`, Esc or Ctrl-C: one `stats` question per `every`.
pub async fn run<F, Fut>(addr: &str, every: std::time::Duration, mut ask: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<HostStats>>,
{
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let mut view = View::new(addr);
    view.update(ask().await?);
    let mut terminal = ratatui::init();
    let result = async {
        loop {
            terminal.draw(|f| view.render(f))?;
            // Keys are read on a blocking thread for at most `every`, then the next sample.
            let key = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Event>> {
                if event::poll(every)? {
                    Ok(Some(event::read()?))
                } else {
                    Ok(None)
                }
            })
            .await??;
            if let Some(Event::Key(k)) = key {
                let quit = k.kind == KeyEventKind::Press
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)));
                if quit {
                    return Ok(());
                }
                continue; // any other key redraws at once
            }
            view.update(ask().await?);
        }
    }
    .await;
    ratatui::restore();
    result
}

/// Renders one frame of `view` as text lines of `width` × `height` (`top --once`).
pub fn render_text(view: &View, width: u16, height: u16) -> Vec<String> {
    let mut terminal = ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))
        .expect("a test backend cannot fail");
    let _ = terminal.draw(|f| view.render(f));
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| {
            let line: String = (0..width)
                .map(|x| buffer[(x, y)].symbol().to_string())
                .collect();
            line.trim_end().to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmwire::wire::PeerFigures;

    fn sample(uptime_ms: u64, calls: u64) -> HostStats {
        HostStats {
            host: "iwrdtw6ivs63lrqpqoobm7bul4vokbidps64woovceqqbxs2bknq".into(),
            uptime_ms,
            instances: vec![
                InstanceFigures {
                    name: "counter".into(),
                    state: ServiceState::Awake,
                    awake: 1,
                    calls,
                    wakes: 1,
                    memory: 1_114_112,
                    ..Default::default()
                },
                InstanceFigures {
                    name: "echo".into(),
                    state: ServiceState::Asleep,
                    calls: 4,
                    wakes: 1,
                    sleeps: 1,
                    ..Default::default()
                },
                InstanceFigures {
                    name: "bad".into(),
                    state: ServiceState::Down,
                    calls: 9,
                    errors: 3,
                    traps: 3,
                    restarts: 2,
                    wakes: 3,
                    ..Default::default()
                },
                InstanceFigures {
                    name: "room".into(),
                    state: ServiceState::Keyed,
                    awake: 2,
                    live: 3,
                    calls: 30,
                    mailbox: 5,
                    memory: 3 << 20,
                    sessions: 4,
                    ..Default::default()
                },
            ],
            total_instances: 4,
            peers: vec![PeerFigures {
                peer: "m2k4fyq7x3xkfc6sp6d4w5rxfjdq6y6ek2f2aoyfazw3pnvmqgpa".into(),
                role: wasmwire::wire::Role::Host,
                addr: "10.0.0.2:7400".into(),
                rtt_us: 1250,
                messages_in: 120,
                messages_out: 80,
                bytes_in: 48_000,
                bytes_out: 2_500_000,
                control_in: 0,
                control_out: 0,
            }],
            refused_handshakes: 1,
            ..Default::default()
        }
    }

    #[test]
    fn rates_come_from_the_hosts_uptime() {
        let mut v = View::new("h");
        v.update(sample(10_000, 100));
        assert!(v.rates.is_empty(), "one sample has no rate");
        v.update(sample(12_000, 150));
        assert_eq!(v.rates.get("counter"), Some(&25.0));
        assert_eq!(v.rates.get("echo"), Some(&0.0));
    }

    #[test]
    fn a_frame_snapshot() {
        let mut v = View::new("127.0.0.1:7400");
        v.update(sample(3_723_000, 100));
        v.update(sample(3_725_000, 150));
        let lines = render_text(&v, 100, 16);
        assert_eq!(lines, SNAPSHOT, "\n{}", lines.join("\n"));
    }

    const SNAPSHOT: &[&str] = &[
        "wasmwire top — 127.0.0.1:7400 (iwrdtw6ivs63)   up 1h02m   awake 3   refused handshakes 1   stalls 0",
        "┌ instances ───────────────────────────────────────────────────────────────────────────────────────┐",
        "│INSTANCE       STATE      CALLS/S     CALLS ERRORS TRAPS RESTARTS MAILBOX     MEMORY SESSIONS     │",
        "│counter        awake         25.0       150      0     0        0       0    1.1 MiB        0     │",
        "│echo           asleep         0.0         4      0     0        0       0        0 B        0     │",
        "│bad            down           0.0         9      3     3        2       0        0 B        0     │",
        "│room           2/3 keys       0.0        30      0     0        0       5    3.0 MiB        4     │",
        "└──────────────────────────────────────────────────────────────────────────────────────────────────┘",
        "┌ peers ───────────────────────────────────────────────────────────────────────────────────────────┐",
        "│PEER          ROLE   ADDRESS               RTT  MSGS IN MSGS OUT   BYTES IN  BYTES OUT            │",
        "│m2k4fyq7x3xk  host   10.0.0.2:7400     1.25 ms      120       80   46.9 KiB    2.4 MiB            │",
        "└──────────────────────────────────────────────────────────────────────────────────────────────────┘",
        "",
        "",
        "",
        "q or Esc quits",
    ];
}
