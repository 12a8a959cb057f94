//! `connwatch top`: the screen rendered on ratatui's test backend from fixed census data (80×24
//! and wide; sorting, filtering, detail, over-threshold marking, the kick preview), and the
//! real thing under tmux against a real cluster with a growing leak.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use connwatch::census::UserCensus;
use connwatch::kick::KickPlan;
use connwatch::lifecycle::Active;
use connwatch::rules::diagnosis::Diagnosis;
use connwatch::rules::{Finding, UserFinding};
use connwatch::top::data::{CensusView, Data, SweepView, Trends};
use connwatch::top::render::{draw, Screen};
use connwatch::top::still_eligible;
use connwatch::top::ui::{rows, Action, KickView, Mode, Ui};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::style::Color;
use ratatui::Terminal;
use support::*;

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn user(account: &str, user: &str, by_server: &[(&str, u64)], name: &str) -> UserCensus {
    let n: u64 = by_server.iter().map(|(_, c)| c).sum();
    UserCensus {
        account: account.into(),
        user: user.into(),
        connections: n,
        threshold: 100,
        over_threshold: n > 100,
        by_server: by_server.iter().map(|(s, c)| (s.to_string(), *c)).collect(),
        by_name: BTreeMap::from([(name.to_string(), n)]).into(),
        by_ip: BTreeMap::from([("10.0.0.7".to_string(), n)]).into(),
        idle_zero_msgs: n / 2,
        ..UserCensus::default()
    }
}

fn data(partial: bool) -> Data {
    let leaky = user("APP", "leaky", &[("n1", 200), ("n2", 50)], "invoice-worker");
    let finding = Finding::ExcessiveUserConnections(Box::new(UserFinding {
        census: leaky.clone(),
        diagnosis: Diagnosis {
            summary: "250 of 250 connections come from one process".into(),
            causes: vec![],
            churn: None,
        },
        growth: None,
    }));
    Data {
        census: CensusView {
            sweep: SweepView {
                started: Some(t(-3)),
                servers_expected: 3,
                servers_responded: if partial { 2 } else { 3 },
                partial,
                missing: if partial { vec!["n3".into()] } else { vec![] },
                connections: 260,
                ..SweepView::default()
            },
            users: vec![
                leaky,
                user("APP", "ok", &[("n2", 7)], "orders"),
                user("BILLING", "x", &[("n3", 3)], ""),
            ],
        },
        findings: vec![Active {
            tokens: finding.tokens(),
            finding,
            since: t(-60),
            last_notified: t(-60),
            renotified: 0,
        }],
        received: t(0),
    }
}

/// The trends of a leak: leaky grew by 60 in the last minute, the others stayed.
fn trends(d: &Data) -> Trends {
    let mut tr = Trends::default();
    let mut before = d.census.users.clone();
    before[0].connections -= 60;
    tr.record(&before, t(-60));
    tr.record(&d.census.users, t(0));
    tr
}

/// Renders the screen at `w`×`h`; returns its lines and the buffer.
fn render(
    d: Option<&Data>,
    ui: &Ui,
    w: u16,
    h: u16,
    color: bool,
) -> (Vec<String>, Terminal<TestBackend>) {
    let empty = Trends::default();
    let tr = d.map(trends);
    let screen = Screen {
        source: "service connwatch.census",
        data: d,
        trends: tr.as_ref().unwrap_or(&empty),
        feed_error: None,
        now: t(0),
        color,
    };
    let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
    term.draw(|f| draw(f, &screen, ui)).unwrap();
    let buf = term.backend().buffer().clone();
    let lines = (0..h)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
        })
        .collect();
    (lines, term)
}

/// The data rows of the table, in order: the lines after the header line.
fn table_rows(lines: &[String]) -> Vec<String> {
    let head = lines
        .iter()
        .position(|l| l.contains("ACCOUNT") && l.contains("CONNS"))
        .expect("a table header");
    lines[head + 1..]
        .iter()
        .take_while(|l| !l.trim().is_empty() && !l.contains("q quit"))
        .cloned()
        .collect()
}

fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
}

fn press(ui: &mut Ui, d: &Data, k: KeyEvent) -> Action {
    let tr = trends(d);
    let shown = rows(d, &tr, ui, t(0));
    ui.keep_selection(&shown);
    ui.on_key(k, &shown, 10)
}

#[test]
fn at_80x24_the_leak_is_on_top_marked_over_with_header_and_keys() {
    let d = data(false);
    let (lines, _) = render(Some(&d), &Ui::default(), 80, 24, false);
    let text = lines.join("\n");
    assert!(
        lines[0].starts_with("connwatch top  from service connwatch.census"),
        "{text}"
    );
    assert!(lines[0].contains("sweep 3s ago"), "{text}");
    assert!(lines[1].contains("servers 3/3 complete"), "{text}");
    assert!(lines[1].contains("260 conns  3 users  1 over"), "{text}");
    assert!(lines[2].contains("firing: excessive 1"), "{text}");
    let r = table_rows(&lines);
    assert_eq!(r.len(), 3, "{text}");
    assert!(r[0].starts_with("! APP"), "{text}");
    for cell in ["leaky", "250", "100", "+150", "+60", "125"] {
        assert!(r[0].contains(cell), "{cell} missing in {:?}", r[0]);
    }
    assert!(r[0].contains('█'), "sparkline: {:?}", r[0]);
    assert!(
        r[1].starts_with("  APP") && r[1].contains("ok") && r[1].contains("-93"),
        "{text}"
    );
    // Narrow: no servers or client columns; the keys on the last line.
    assert!(
        !text.contains("SERVERS") && !text.contains("TOP CLIENT"),
        "{text}"
    );
    assert!(
        lines[23].contains("q quit") && lines[23].contains("k kick"),
        "{text}"
    );
}

#[test]
fn wide_shows_servers_and_top_client_name() {
    let d = data(false);
    let (lines, _) = render(Some(&d), &Ui::default(), 160, 30, false);
    let text = lines.join("\n");
    assert!(
        text.contains("SERVERS") && text.contains("TOP CLIENT"),
        "{text}"
    );
    let r = table_rows(&lines);
    assert!(r[0].contains("n1:200 n2:50"), "{text}");
    assert!(r[0].contains("invoice-worker (250)"), "{text}");
    assert!(r[2].contains("(unnamed) (3)"), "{text}");
}

#[test]
fn a_partial_sweep_says_so_and_names_the_missing_server() {
    let d = data(true);
    let (lines, _) = render(Some(&d), &Ui::default(), 80, 24, false);
    assert!(
        lines[1].contains("servers 2/3 PARTIAL missing n3"),
        "{}",
        lines[1]
    );
    let (lines, _) = render(None, &Ui::default(), 80, 24, false);
    assert!(lines[3].contains("waiting for the census"), "{lines:#?}");
}

#[test]
fn sorting_by_column_and_reversing_reorders_the_rows() {
    let d = data(false);
    let mut ui = Ui::default();
    let users = |ui: &Ui| {
        let (lines, _) = render(Some(&d), ui, 80, 24, false);
        table_rows(&lines)
            .iter()
            .map(|r| {
                r.split_whitespace()
                    .find(|w| ["leaky", "ok", "x"].contains(w))
                    .unwrap()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(users(&ui), ["leaky", "ok", "x"]);
    press(&mut ui, &d, key('u'));
    assert_eq!(users(&ui), ["leaky", "ok", "x"], "users A→Z");
    press(&mut ui, &d, key('r'));
    assert_eq!(users(&ui), ["x", "ok", "leaky"], "reversed");
    press(&mut ui, &d, key('a'));
    press(&mut ui, &d, key('r'));
    assert_eq!(users(&ui)[0], "x", "accounts Z→A: BILLING first");
    // `s` steps through the columns; the header marks the sorted one.
    let mut ui = Ui::default();
    press(&mut ui, &d, key('s'));
    let (lines, _) = render(Some(&d), &ui, 80, 24, false);
    assert!(lines.iter().any(|l| l.contains("+/-↓")), "{lines:#?}");
}

#[test]
fn filtering_by_account_or_user_keeps_only_the_matches() {
    let d = data(false);
    let mut ui = Ui::default();
    press(&mut ui, &d, key('/'));
    for c in "bill".chars() {
        press(&mut ui, &d, key(c));
    }
    let (lines, _) = render(Some(&d), &ui, 80, 24, false);
    assert!(lines[23].contains("/bill"), "{}", lines[23]);
    press(
        &mut ui,
        &d,
        KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE),
    );
    let (lines, _) = render(Some(&d), &ui, 80, 24, false);
    let r = table_rows(&lines);
    assert_eq!(r.len(), 1, "{lines:#?}");
    assert!(r[0].contains("BILLING"), "{lines:#?}");
    assert!(lines[23].contains("filter \"bill\""), "{}", lines[23]);
    // By user, case-insensitive; Esc clears.
    ui.filter = "LEAK".into();
    let (lines, _) = render(Some(&d), &ui, 80, 24, false);
    assert_eq!(table_rows(&lines).len(), 1);
    press(&mut ui, &d, KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
    let (lines, _) = render(Some(&d), &ui, 80, 24, false);
    assert_eq!(table_rows(&lines).len(), 3);
}

#[test]
fn enter_shows_the_users_detail_with_its_diagnosis() {
    let d = data(false);
    let mut ui = Ui::default();
    press(
        &mut ui,
        &d,
        KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE),
    );
    assert_eq!(ui.mode, Mode::Detail);
    let (lines, _) = render(Some(&d), &ui, 80, 24, false);
    // Long lines wrap at word boundaries: read them as one text.
    let text = lines
        .iter()
        .map(|l| l.trim_end())
        .collect::<Vec<_>>()
        .join(" ");
    for want in [
        "APP / leaky",
        "250 connections, threshold 100 (OVER by 150)",
        "by server: n1 200, n2 50",
        "by client name: invoice-worker 250",
        "by IP: 10.0.0.7 250",
        "excessive_user_connections since",
        "250 of 250 connections come from one process",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    // Another user: no finding, said so.
    press(
        &mut ui,
        &d,
        KeyEvent::new(KeyCode::Down, KeyModifiers::NONE),
    );
    let (lines, _) = render(Some(&d), &ui, 80, 24, false);
    assert!(lines.join("\n").contains("no finding firing for this user"));
}

#[test]
fn a_detail_counts_the_ips_a_cut_census_does_not_list() {
    // A fleet of 1,500 clients each on its own IP, as the census endpoint serves it when
    // the whole census is over the servers' max_payload: its 50 largest IPs listed, `spread`
    // counting all 1,500.
    let mut d = data(false);
    let fleet = &mut d.census.users[0];
    fleet.by_ip = (0..50)
        .map(|i| (format!("10.2.0.{i}"), 1))
        .collect::<BTreeMap<_, _>>()
        .into();
    fleet.spread.ips = 1_500;
    let mut ui = Ui::default();
    press(
        &mut ui,
        &d,
        KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE),
    );
    let (lines, _) = render(Some(&d), &ui, 120, 24, false);
    let text = lines.join(" ");
    assert!(text.contains("+1495 more"), "{text}");
}

fn plan(cid: u64) -> KickPlan {
    KickPlan {
        server: "n1".into(),
        server_id: "NID1".into(),
        cid,
        account: "APP".into(),
        account_name: None,
        user: "leaky".into(),
        user_name: None,
        name: "invoice-worker".into(),
        ip: "10.0.0.7".into(),
        idle: Duration::from_secs(7200),
        age: Duration::from_secs(9000),
        user_connections: 250,
        threshold: 100,
        pattern: Some(connwatch::census::LeakPattern::ZeroMsgs),
    }
}

#[test]
fn k_previews_and_only_y_after_the_preview_sends() {
    let d = data(false);
    let mut ui = Ui::default();
    let who = ("APP".to_string(), "leaky".to_string());
    assert_eq!(press(&mut ui, &d, key('k')), Action::PlanKick(who.clone()));
    let (lines, _) = render(Some(&d), &ui, 80, 24, false);
    assert!(
        lines.join("\n").contains("sweeping the cluster"),
        "{lines:#?}"
    );
    // `y` before the preview came sends nothing.
    assert_eq!(press(&mut ui, &d, key('y')), Action::None);
    assert_eq!(ui.mode, Mode::Table);
    // The preview's answer for a view that was left is dropped.
    ui.kick_answer(KickView::Preview(who.clone(), vec![plan(7)]));
    assert_eq!(ui.mode, Mode::Table);

    assert_eq!(press(&mut ui, &d, key('k')), Action::PlanKick(who.clone()));
    ui.kick_answer(KickView::Preview(who.clone(), vec![plan(7), plan(9)]));
    let (lines, _) = render(Some(&d), &ui, 80, 24, false);
    let text = lines.join("\n");
    assert!(
        text.contains("2 connection(s) of APP/leaky would be kicked. Nothing is sent yet."),
        "{text}"
    );
    assert!(
        text.contains("n1 cid 7 invoice-worker 10.0.0.7 idle 2h"),
        "{text}"
    );
    assert!(text.contains("y: kick"), "{text}");
    // Any other key cancels.
    assert_eq!(press(&mut ui, &d, key('n')), Action::None);
    assert_eq!(ui.mode, Mode::Table);
    press(&mut ui, &d, key('k'));
    ui.kick_answer(KickView::Preview(who.clone(), vec![plan(7), plan(9)]));
    assert_eq!(
        press(&mut ui, &d, key('y')),
        Action::SendKick(who.clone(), vec![plan(7), plan(9)])
    );
    ui.kick_answer(KickView::Done(who, vec!["kicked cid 7 on n1".into()]));
    let (lines, _) = render(Some(&d), &ui, 80, 24, false);
    assert!(lines.join("\n").contains("kicked cid 7 on n1"));
}

#[test]
fn a_confirmed_kick_sends_only_previewed_connections_still_eligible() {
    let (send, dropped) = still_eligible(&[plan(7), plan(9)], vec![plan(9), plan(11)]);
    assert_eq!(
        send,
        vec![plan(9)],
        "cid 11 was never previewed, cid 7 is no longer eligible"
    );
    assert_eq!(dropped, 1);
}

#[test]
fn colours_only_when_asked() {
    let d = data(false);
    let (_, term) = render(Some(&d), &Ui::default(), 80, 24, false);
    let buf = term.backend().buffer();
    assert!(buf.content.iter().all(|c| c.fg == Color::Reset));
    let (lines, term) = render(Some(&d), &Ui::default(), 80, 24, true);
    let buf = term.backend().buffer();
    let row = lines.iter().position(|l| l.starts_with("! APP")).unwrap() as u16;
    assert_eq!(
        buf[(2, row)].fg,
        Color::Red,
        "the over-threshold row is red"
    );
}

// --- end to end, under tmux ----------------------------------------------------------------

/// A tmux server of its own (its own socket; panes stay after their command exits, so its
/// exit status and the terminal it left can be read), killed on drop.
struct Tmux {
    socket: String,
    conf: std::path::PathBuf,
}

impl Tmux {
    fn new(dir: &std::path::Path) -> Self {
        let conf = dir.join("tmux.conf");
        std::fs::write(&conf, "set -g remain-on-exit on\n").unwrap();
        Self {
            socket: format!("connwatch-top-{}", std::process::id()),
            conf,
        }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", self.conf.to_str().unwrap()])
            .args(args)
            .output()
            .expect("tmux runs")
    }

    /// Starts `command` in a detached session `name` of `w`×`h`.
    fn start(&self, name: &str, w: u16, h: u16, command: &str) {
        let (w, h) = (w.to_string(), h.to_string());
        let out = self.cmd(&["new-session", "-d", "-s", name, "-x", &w, "-y", &h, command]);
        assert!(
            out.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn screen(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", name]).stdout).into_owned()
    }

    /// A pane variable (`pane_dead`, `alternate_on`, `pane_pid`, ...).
    fn var(&self, name: &str, var: &str) -> String {
        let f = format!("#{{{var}}}");
        let out = self.cmd(&["display-message", "-p", "-t", name, &f]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts top in session `name`, from a shell that writes top's exit status to a file
    /// (tmux does not always record a dead pane's status).
    fn start_top(
        &self,
        name: &str,
        w: u16,
        h: u16,
        config: &std::path::Path,
    ) -> std::path::PathBuf {
        let status = self.conf.with_file_name(format!("exit-{name}"));
        let command = format!(
            "{} --config {} top; echo $? > {}",
            connwatch_bin().display(),
            config.display(),
            status.display()
        );
        self.start(name, w, h, &command);
        status
    }

    /// Waits for top to exit; then asserts it exited 0 and left the alternate screen.
    async fn assert_exits_restored(&self, name: &str, status: &std::path::Path, why: &str) {
        let mut code = String::new();
        let done = wait_until_async(Duration::from_secs(10), || {
            code = std::fs::read_to_string(status).unwrap_or_default();
            code.ends_with('\n') && self.var(name, "pane_dead") == "1"
        })
        .await;
        assert!(done, "top did not exit on {why}:\n{}", self.screen(name));
        assert_eq!(
            code.trim(),
            "0",
            "exit status after {why}:\n{}",
            self.screen(name)
        );
        assert_eq!(
            self.var(name, "alternate_on"),
            "0",
            "alternate screen left after {why}"
        );
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The user of the first table row on a captured screen, and whether it is marked over.
fn first_row(screen: &str) -> Option<(String, bool)> {
    let lines: Vec<&str> = screen.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.contains("ACCOUNT") && l.contains("CONNS"))?;
    let row = lines.get(head + 1)?;
    let user = row
        .split_whitespace()
        .find(|w| ["leaky", "steady"].contains(w))?;
    Some((user.to_string(), row.starts_with('!')))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_tmux_a_growing_leak_rises_to_the_top_within_2s_of_the_census() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(
        ClusterSpec::new(dir.path().join("cluster")).account(
            AccountSpec::new("APP")
                .user("steady", "pw")
                .user("leaky", "pw"),
        ),
    )
    .unwrap();
    let config = format!(
        "{}[sweep]\ninterval = \"500ms\"\ntimeout = \"2s\"\n[detect]\nmax_connections_per_user = 50\n",
        cluster.connwatch_toml()
    );
    let path = write_config(dir.path(), &config);
    let steady = load::open(
        LoadSpec::new(
            cluster.client_url(0),
            LoadAuth::user_password("steady", "pw"),
            30,
        )
        .name("orders"),
    )
    .await
    .unwrap();
    let mut leak = vec![load::open(
        LoadSpec::new(
            cluster.client_url(1),
            LoadAuth::user_password("leaky", "pw"),
            5,
        )
        .name("invoice-worker"),
    )
    .await
    .unwrap()];
    let running = Running::start(&path, dir.path().join("connwatch.log"));
    let tmux = Tmux::new(dir.path());
    let top_status = tmux.start_top("top", 100, 30, &path);
    // Before the leak grows: the steady user on top, not over.
    let mut screen = String::new();
    let before = wait_until_async(Duration::from_secs(30), || {
        screen = tmux.screen("top");
        first_row(&screen) == Some(("steady".into(), false))
    })
    .await;
    assert!(before, "steady is not on top:\n{screen}\n{}", running.log());
    assert!(screen.contains("servers 3/3 complete"), "{screen}");

    // The leak grows past the threshold and past steady.
    leak.push(
        load::open(
            LoadSpec::new(
                cluster.client_url(2),
                LoadAuth::user_password("leaky", "pw"),
                100,
            )
            .name("invoice-worker"),
        )
        .await
        .unwrap(),
    );
    let (_, client) = Seen::subscribe(&cluster.client_url(0)).await;
    // When the service's census endpoint first shows the grown leak.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    let census_shows = loop {
        poll.tick().await;
        assert!(
            Instant::now() < deadline,
            "the census never showed the leak: {}",
            running.log()
        );
        let Ok(reply) = client.request("connwatch.census", "".into()).await else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
        let leaky = v["users"]
            .as_array()
            .and_then(|us| us.iter().find(|u| u["user"] == "leaky").cloned());
        if leaky.is_some_and(|u| u["connections"] == 105) {
            break Instant::now();
        }
    };
    let on_top = wait_until_async(Duration::from_secs(10), || {
        screen = tmux.screen("top");
        first_row(&screen) == Some(("leaky".into(), true))
    })
    .await;
    let took = census_shows.elapsed();
    assert!(on_top, "leaky never rose to the top:\n{screen}");
    assert!(
        took <= Duration::from_secs(2),
        "leaky rose to the top {took:?} after the census showed it:\n{screen}"
    );
    assert!(screen.contains("105"), "{screen}");
    println!("{screen}");
    assert!(
        screen.contains("firing: excessive 1") || screen.contains("1 over"),
        "{screen}"
    );

    // q quits, restoring the terminal.
    assert_eq!(
        tmux.var("top", "alternate_on"),
        "1",
        "top runs on the alternate screen"
    );
    tmux.cmd(&["send-keys", "-t", "top", "q"]);
    tmux.assert_exits_restored("top", &top_status, "q").await;

    // So does SIGTERM.
    let term_status = tmux.start_top("term", 80, 24, &path);
    let up = wait_until_async(Duration::from_secs(30), || {
        first_row(&tmux.screen("term")).is_some() && tmux.var("term", "alternate_on") == "1"
    })
    .await;
    assert!(
        up,
        "second top did not show the table:\n{}",
        tmux.screen("term")
    );
    // top is the child of the pane's shell.
    let shell = tmux.var("term", "pane_pid");
    let out = Command::new("pgrep").args(["-P", &shell]).output().unwrap();
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !pid.is_empty() && !pid.contains('\n'),
        "top's pid under {shell}: {pid:?}"
    );
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    tmux.assert_exits_restored("term", &term_status, "SIGTERM")
        .await;
    drop(steady);
    drop(leak);
}
