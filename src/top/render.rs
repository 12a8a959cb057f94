//! `connwatch top`'s screen: a pure function of the data, the trends and the interface state,
//! drawn on any ratatui backend (the terminal, or a test backend).
//!
//! It reads results and computes no findings of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Row as TableRow, Table, Wrap};
use ratatui::Frame;

use super::data::{key_of, Data, Trends, UserKey};
use super::ui::{rows, selected_index, KickView, Mode, Row, Ui};
use crate::census::UserCensus;
use crate::human::signed_rate;
use crate::rules::Finding;

/// From this width on, the table also shows servers and the top client name.
pub const WIDE: u16 = 120;
/// Columns of the sparkline.
const TREND_WIDTH: u16 = 10;

/// Everything the screen shows, besides the interface state.
#[derive(Debug, Clone, Copy)]
pub struct Screen<'a> {
    /// Where the census comes from, e.g. `service connwatch.census`.
    pub source: &'a str,
    /// The latest census and findings; `None` before the first.
    pub data: Option<&'a Data>,
    /// Each user's recent counts.
    pub trends: &'a Trends,
    /// Why the last refresh failed, when it did (the data shown is then older).
    pub feed_error: Option<&'a str>,
    /// Now, for ages and rates.
    pub now: DateTime<Utc>,
    /// Whether to use colours (a terminal that wants them).
    pub color: bool,
}

impl Screen<'_> {
    fn style(&self, color: Color) -> Style {
        if self.color {
            Style::default().fg(color)
        } else {
            Style::default()
        }
    }

    fn bold(&self) -> Style {
        Style::default().add_modifier(Modifier::BOLD)
    }
}

/// Rows of the table that fit in a terminal of `height` lines (for paging).
pub fn page_rows(height: u16) -> usize {
    height.saturating_sub(6) as usize
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, s: &Screen, ui: &Ui) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header(s)), head);
    match s.data {
        None => frame.render_widget(
            Paragraph::new(format!(
                "waiting for the census from {}{}",
                s.source,
                s.feed_error.map(|e| format!(": {e}")).unwrap_or_default()
            ))
            .wrap(Wrap { trim: true }),
            body,
        ),
        Some(data) => {
            let shown = rows(data, s.trends, ui, s.now);
            if ui.mode == Mode::Detail {
                match ui.selected.as_ref().and_then(|k| data.user(k)) {
                    Some(u) => detail(frame, body, s, data, u),
                    None => table(frame, body, s, ui, &shown),
                }
            } else {
                table(frame, body, s, ui, &shown);
            }
        }
    }
    frame.render_widget(Paragraph::new(footer(s, ui)), foot);
    match &ui.mode {
        Mode::Kick(view) => kick_popup(frame, body, view),
        Mode::Help => help_popup(frame, body),
        _ => {}
    }
}

fn header<'a>(s: &Screen) -> Vec<Line<'a>> {
    let mut first = vec![Span::styled("connwatch top", s.bold())];
    first.push(Span::raw(format!("  from {}", s.source)));
    let Some(d) = s.data else {
        return vec![Line::from(first)];
    };
    let age = (s.now - d.received).num_seconds().max(0);
    let sweep = &d.census.sweep;
    if let Some(started) = sweep.started {
        let secs = (s.now - started).num_seconds().max(0) as u64;
        first.push(Span::raw(format!("  sweep {} ago", ago(secs))));
    }
    if let Some(e) = s.feed_error {
        first.push(Span::styled(
            format!("  STALE {}s: {e}", age),
            s.style(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    }
    let mut second = vec![Span::raw(format!(
        "servers {}/{} ",
        sweep.servers_responded, sweep.servers_expected
    ))];
    if sweep.partial {
        let mut why: Vec<String> = sweep.missing.clone();
        why.extend(sweep.errors.iter().map(|e| format!("{} (error)", e.server)));
        second.push(Span::styled(
            format!("PARTIAL missing {}", why.join(", ")),
            s.style(Color::Yellow).add_modifier(Modifier::BOLD),
        ));
    } else {
        second.push(Span::styled("complete", s.style(Color::Green)));
    }
    let over = d.census.users.iter().filter(|u| u.over_threshold).count();
    second.push(Span::raw(format!(
        "  {} conns  {} users  ",
        sweep.connections,
        d.census.users.len()
    )));
    second.push(Span::styled(
        format!("{over} over"),
        if over > 0 {
            s.style(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::default()
        },
    ));
    let firing = d.firing_by_type();
    let third = if firing.is_empty() {
        Line::raw("firing: none")
    } else {
        Line::from(vec![
            Span::raw("firing: "),
            Span::styled(firing_text(&firing), s.style(Color::Red)),
        ])
    };
    vec![Line::from(first), Line::from(second), third]
}

/// `excessive 1 · growth 2`: short names for the header.
fn firing_text(firing: &BTreeMap<&'static str, usize>) -> String {
    firing
        .iter()
        .map(|(k, n)| {
            let short = match *k {
                "excessive_user_connections" => "excessive",
                "user_connection_growth" => "growth",
                "account_connection_pressure" => "account pressure",
                "server_connection_pressure" => "server pressure",
                "connections_refused" => "refused",
                "server_connection_hotspot" => "hotspot",
                "account_connection_imbalance" => "imbalance",
                other => other,
            };
            format!("{short} {n}")
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

fn ago(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn footer<'a>(s: &Screen, ui: &Ui) -> Line<'a> {
    match &ui.mode {
        Mode::Filter => Line::from(vec![
            Span::styled("/", s.bold()),
            Span::raw(format!("{}█  Enter keep  Esc clear", ui.filter)),
        ]),
        _ => {
            let filter = if ui.filter.is_empty() {
                String::new()
            } else {
                format!("filter \"{}\"  ", ui.filter)
            };
            Line::raw(format!(
                "{filter}sort {}{}  q quit ↑↓ Enter detail / filter s sort r rev k kick ? keys",
                ui.sort.header(),
                if ui.descending { "↓" } else { "↑" }
            ))
        }
    }
}

/// The table's columns at this width: (header, width); names take what is left.
fn columns(width: u16) -> Vec<(&'static str, Constraint)> {
    let wide = width >= WIDE;
    let fixed: u16 = 1 + 6 + 6 + 7 + 7 + TREND_WIDTH + 6;
    let gaps = if wide { 10 } else { 8 };
    let rest = width.saturating_sub(fixed + gaps);
    let (account, user, servers) = if wide {
        let a = rest * 15 / 100;
        let u = rest * 22 / 100;
        (a, u, rest * 33 / 100)
    } else {
        (rest * 2 / 5, rest - rest * 2 / 5, 0)
    };
    let mut cols = vec![
        ("", Constraint::Length(1)),
        ("ACCOUNT", Constraint::Length(account)),
        ("USER", Constraint::Length(user)),
        ("CONNS", Constraint::Length(6)),
        ("LIMIT", Constraint::Length(6)),
        ("+/-", Constraint::Length(7)),
        ("/MIN", Constraint::Length(7)),
        ("TREND", Constraint::Length(TREND_WIDTH)),
        ("IDLE0", Constraint::Length(6)),
    ];
    if wide {
        cols.push(("SERVERS", Constraint::Length(servers)));
        cols.push(("TOP CLIENT", Constraint::Min(8)));
    }
    cols
}

fn table(frame: &mut Frame, area: Rect, s: &Screen, ui: &Ui, shown: &[Row]) {
    let cols = columns(area.width);
    let wide = cols.len() > 9;
    let sorted = ui.sort.header();
    let header = TableRow::new(cols.iter().map(|(h, _)| {
        if *h == sorted {
            format!("{h}{}", if ui.descending { "↓" } else { "↑" })
        } else {
            h.to_string()
        }
    }))
    .style(s.bold());
    let selected = selected_index(shown, ui);
    // Keep the selected row on screen.
    let page = area.height.saturating_sub(1) as usize;
    let skip = selected.map_or(0, |i| (i + 1).saturating_sub(page));
    let body: Vec<TableRow> = shown
        .iter()
        .enumerate()
        .skip(skip)
        .take(page)
        .map(|(i, r)| {
            let u = r.user;
            let mut cells = vec![
                if u.over_threshold { "!" } else { " " }.to_string(),
                u.account_label() + if u.system { " [sys]" } else { "" },
                u.label(),
                u.connections.to_string(),
                u.threshold.to_string(),
                format!("{:+}", r.over()),
                r.rate.map_or("-".into(), signed_rate),
                s.trends.sparkline(&key_of(u), s.now, TREND_WIDTH as usize),
                u.idle_zero_msgs.to_string(),
            ];
            if wide {
                cells.push(by_server(u));
                cells.push(top_name(u));
            }
            let mut style = if u.over_threshold {
                s.style(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            if Some(i) == selected {
                style = style.add_modifier(Modifier::REVERSED);
            }
            TableRow::new(cells).style(style)
        })
        .collect();
    let widths: Vec<Constraint> = cols.iter().map(|(_, c)| *c).collect();
    frame.render_widget(
        Table::new(body, widths).header(header).column_spacing(1),
        area,
    );
}

fn by_server(u: &UserCensus) -> String {
    let mut v: Vec<(&String, &u64)> = u.by_server.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(k, n)| format!("{k}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn top_name(u: &UserCensus) -> String {
    top(&u.by_name, 1)
        .into_iter()
        .next()
        .map(|(k, n)| format!("{} ({n})", unnamed(k)))
        .unwrap_or_default()
}

fn unnamed(k: &str) -> &str {
    if k.is_empty() {
        "(unnamed)"
    } else {
        k
    }
}

/// The `n` largest entries, largest first.
fn top(m: &BTreeMap<String, u64>, n: usize) -> Vec<(&str, u64)> {
    let mut v: Vec<(&str, u64)> = m.iter().map(|(k, c)| (k.as_str(), *c)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.truncate(n);
    v
}

fn detail(frame: &mut Frame, area: Rect, s: &Screen, data: &Data, u: &UserCensus) {
    let key: UserKey = key_of(u);
    let mut lines = vec![Line::from(vec![
        Span::styled(format!("{} / {}", u.account_label(), u.label()), s.bold()),
        Span::raw(format!(
            "  {} connections, threshold {} ({}), {}/min, {} idle with no messages",
            u.connections,
            u.threshold,
            if u.over_threshold {
                format!("OVER by {}", u.connections - u.threshold)
            } else {
                format!("{} below", u.threshold - u.connections.min(u.threshold))
            },
            s.trends
                .per_minute(&key, s.now)
                .map_or("-".into(), signed_rate),
            u.idle_zero_msgs
        )),
    ])];
    // `count`: the entries there are (a census cut to fit the servers' `max_payload` lists
    // each user's 50 largest IPs; `spread` has them all).
    let section = |title: &str, m: &BTreeMap<String, u64>, count: usize| {
        let more = count.max(m.len()).saturating_sub(5);
        let mut text = top(m, 5)
            .into_iter()
            .map(|(k, n)| format!("{} {n}", unnamed(k)))
            .collect::<Vec<_>>()
            .join(", ");
        if more > 0 {
            text.push_str(&format!(", +{more} more"));
        }
        Line::raw(format!("{title}: {text}"))
    };
    lines.push(section("by server", &u.by_server, 0));
    lines.push(section("by client name", &u.by_name, 0));
    lines.push(section("by IP", &u.by_ip, u.spread.ips as usize));
    lines.push(Line::styled(
        format!(
            "suspects ({} listed of {} idle with no messages):",
            u.suspects.len(),
            u.idle_zero_msgs
        ),
        s.bold(),
    ));
    for x in u.suspects.iter().take(5) {
        lines.push(Line::raw(connection(
            &x.server, x.cid, &x.name, &x.ip, x.idle,
        )));
    }
    lines.push(Line::styled("diagnosis:", s.bold()));
    let findings = data.findings_of(&u.account, &u.user);
    if findings.is_empty() {
        lines.push(Line::raw("  no finding firing for this user"));
    }
    for a in findings {
        if let Finding::ExcessiveUserConnections(f) | Finding::UserConnectionGrowth(f) = &a.finding
        {
            lines.push(Line::raw(format!(
                "  {} since {}: {}",
                a.kind().name(),
                a.since.format("%H:%M:%S"),
                f.diagnosis.summary
            )));
        }
    }
    lines.push(Line::raw("Esc back  k kick preview"));
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::TOP)),
        area,
    );
}

/// One connection on a line: where, which, whose, how long idle.
fn connection(server: &str, cid: u64, name: &str, ip: &str, idle: Duration) -> String {
    format!(
        "  {server} cid {cid} {} {ip} idle {}",
        unnamed(name),
        ago(idle.as_secs())
    )
}

fn popup(frame: &mut Frame, area: Rect, title: &str, lines: Vec<Line>) {
    let width = area.width.saturating_sub(4).min(100);
    let height = (lines.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    frame.render_widget(Clear, r);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(title.to_string()),
        ),
        r,
    );
}

fn kick_popup(frame: &mut Frame, area: Rect, view: &KickView) {
    let who = |k: &UserKey| format!("{}/{}", k.0, k.1);
    let lines: Vec<Line> = match view {
        KickView::Planning(k) => vec![Line::raw(format!(
            "sweeping the cluster for the eligible connections of {} (the `connwatch kick` policy)…",
            who(k)
        ))],
        KickView::Preview(k, plans) => {
            let mut l = vec![Line::raw(format!(
                "{} connection(s) of {} would be kicked. Nothing is sent yet.",
                plans.len(),
                who(k)
            ))];
            let room = area.height.saturating_sub(6) as usize;
            for p in plans.iter().take(room) {
                l.push(Line::raw(format!(
                    "{} age {}",
                    connection(&p.server, p.cid, &p.name, &p.ip, p.idle),
                    ago(p.age.as_secs())
                )));
            }
            if plans.len() > room {
                l.push(Line::raw(format!("  … {} more", plans.len() - room)));
            }
            l.push(Line::raw(
                "y: kick those still eligible after a fresh sweep · any other key: cancel",
            ));
            l
        }
        KickView::Sending(k) => vec![Line::raw(format!(
            "sweeping again and kicking the previewed connections of {} still eligible…",
            who(k)
        ))],
        KickView::Done(_, result) => {
            let mut l: Vec<Line> = result.iter().map(|r| Line::raw(r.clone())).collect();
            l.push(Line::raw("any key: close"));
            l
        }
    };
    popup(frame, area, " kick ", lines);
}

fn help_popup(frame: &mut Frame, area: Rect) {
    let lines = [
        "↑ ↓ PgUp PgDn Home End   select a user",
        "Enter                    the user's detail (Esc back)",
        "/                        filter by account or user (Enter keep, Esc clear)",
        "s / S  (> / <)           next / previous sort column; r reverses",
        "c o g i a u              sort by conns, +/-, /min, idle0, account, user",
        "k                        preview a kick of the user (y confirms)",
        "q  Ctrl-C                quit",
    ];
    popup(
        frame,
        area,
        " keys ",
        lines.iter().map(|l| Line::raw(*l)).collect(),
    );
}
