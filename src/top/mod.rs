//! `connwatch top`: a live, full-screen view of who holds the cluster's connections.
//!
//! - [`data`]: the census and findings as served, and each user's recent counts (pure);
//! - [`ui`]: the interface state and what each key does (pure);
//! - [`render`]: the screen as a function of both (pure, drawn on any ratatui backend);
//! - [`source`]: the service's endpoints polled, or `--standalone` sweeps (I/O);
//! - here: the terminal, the event loop and the kick preview (I/O).
//!
//! The terminal is restored on every way out: `q`, Ctrl-C, SIGTERM (the shutdown token), an
//! error, and a panic (a hook restores it before the panic message is printed).

pub mod data;
pub mod render;
pub mod source;
pub mod ui;

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use crossterm::event::{Event, EventStream, KeyEventKind};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use futures::StreamExt;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::{self, UserKick};
use crate::cli::TopArgs;
use crate::config::Config;
use crate::error::AppError;
use crate::kick::KickPlan;
use crate::session::{self, Session};
use crate::state::State;
use data::{Data, Trends, UserKey};
use render::Screen;
use ui::{Action, KickView, Ui};

/// How often the screen is redrawn without news (ages, staleness).
const REDRAW: Duration = Duration::from_millis(500);

/// Runs `connwatch top` until `q`, Ctrl-C or `shutdown`.
pub async fn run(
    config: &Config,
    args: &TopArgs,
    shutdown: CancellationToken,
) -> Result<(), AppError> {
    if !std::io::stdout().is_terminal() {
        return Err(AppError::Refused(
            "connwatch top needs a terminal on stdout (`connwatch report` prints a table)".into(),
        ));
    }
    let session = Arc::new(session::open(config, None).await?);
    let (tx, feed) = mpsc::channel(4);
    let stop = shutdown.child_token();
    let source = if args.standalone {
        tokio::spawn(source::sweep_standalone(
            session.system.clone(),
            session.system_account.clone(),
            config.clone(),
            args.sweep_interval,
            tx,
            stop.clone(),
        ));
        format!(
            "own sweeps every {}",
            humantime::format_duration(args.sweep_interval)
        )
    } else {
        let prefix = config.service.prefix.clone();
        tokio::spawn(source::poll_service(
            session.system.client().clone(),
            prefix.clone(),
            config.sweep.timeout,
            args.refresh,
            tx,
            stop.clone(),
        ));
        format!("service {prefix}.census")
    };
    let color = std::env::var_os("NO_COLOR").is_none()
        && std::env::var("TERM").map_or(true, |t| t != "dumb");
    let result = {
        let _guard = TerminalGuard::enter().map_err(AppError::Terminal)?;
        let backend = CrosstermBackend::new(std::io::stdout());
        let mut terminal = Terminal::new(backend).map_err(AppError::Terminal)?;
        let lp = Loop {
            config,
            session: session.clone(),
            source: &source,
            color,
        };
        lp.run(&mut terminal, feed, shutdown).await
    };
    stop.cancel();
    if let Ok(s) = Arc::try_unwrap(session) {
        let _ = s.system.client().drain().await;
    }
    result
}

/// The terminal in raw mode on the alternate screen, restored when dropped.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> std::io::Result<Self> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        terminal::enable_raw_mode()?;
        crossterm::execute!(
            std::io::stdout(),
            EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        Ok(Self)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves raw mode and the alternate screen, shows the cursor; harmless when done twice.
fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

struct Loop<'a> {
    config: &'a Config,
    session: Arc<Session>,
    source: &'a str,
    color: bool,
}

impl Loop<'_> {
    async fn run<B: ratatui::backend::Backend>(
        &self,
        terminal: &mut Terminal<B>,
        mut feed: mpsc::Receiver<source::Update>,
        shutdown: CancellationToken,
    ) -> Result<(), AppError> {
        let mut events = EventStream::new();
        let (kick_tx, mut kicks) = mpsc::channel::<KickView>(4);
        let mut redraw = tokio::time::interval(REDRAW);
        let mut ui = Ui::default();
        let mut data: Option<Data> = None;
        let mut trends = Trends::default();
        let mut feed_error: Option<String> = None;
        loop {
            let now = Utc::now();
            let screen = Screen {
                source: self.source,
                data: data.as_ref(),
                trends: &trends,
                feed_error: feed_error.as_deref(),
                now,
                color: self.color,
            };
            if let Some(d) = &data {
                ui.keep_selection(&ui::rows(d, &trends, &ui, now));
            }
            terminal
                .draw(|f| render::draw(f, &screen, &ui))
                .map_err(AppError::Terminal)?;
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = redraw.tick() => {}
                Some(update) = feed.recv() => match update {
                    Ok(d) => {
                        trends.record(&d.census.users, d.received);
                        data = Some(d);
                        feed_error = None;
                    }
                    Err(e) => feed_error = Some(e),
                },
                Some(view) = kicks.recv() => ui.kick_answer(view),
                ev = events.next() => match ev {
                    Some(Ok(Event::Key(key))) if key.kind == KeyEventKind::Press => {
                        let page = render::page_rows(terminal.size().map_err(AppError::Terminal)?.height);
                        let empty = Data::default();
                        let d = data.as_ref().unwrap_or(&empty);
                        let rows = ui::rows(d, &trends, &ui, now);
                        match ui.on_key(key, &rows, page) {
                            Action::Quit => return Ok(()),
                            Action::None => {}
                            Action::PlanKick(user) => self.spawn_kick(user, None, kick_tx.clone()),
                            Action::SendKick(user, plans) => {
                                self.spawn_kick(user, Some(plans), kick_tx.clone())
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(AppError::Terminal(e)),
                    None => return Ok(()),
                },
            }
        }
    }

    /// Plans a kick of `user` (the `connwatch kick --account --user` policy, after a complete
    /// sweep); with `previewed`, kicks those of them still eligible after that sweep.
    fn spawn_kick(
        &self,
        user: UserKey,
        previewed: Option<Vec<KickPlan>>,
        tx: mpsc::Sender<KickView>,
    ) {
        let (session, config) = (self.session.clone(), self.config.clone());
        tokio::spawn(async move {
            let view = kick(&session, &config, user.clone(), previewed).await;
            let _ = tx.send(view).await;
        });
    }
}

async fn kick(
    session: &Session,
    config: &Config,
    user: UserKey,
    previewed: Option<Vec<KickPlan>>,
) -> KickView {
    let mut state = State::load_or_default(config.state.file.as_deref());
    let planned = app::plan_user_kick(session, config, &mut state, &user.0, &user.1).await;
    let (plans, snap) = match planned {
        Err(e) => return KickView::Done(user, vec![format!("nothing sent: {e}")]),
        Ok(UserKick::Nothing(why)) => {
            return KickView::Done(
                user.clone(),
                vec![format!("nothing to kick for {}/{}: {why}", user.0, user.1)],
            )
        }
        Ok(UserKick::Eligible { plans, snap }) => (plans, *snap),
    };
    let Some(previewed) = previewed else {
        return KickView::Preview(user, plans);
    };
    let (send, dropped) = still_eligible(&previewed, plans);
    if send.is_empty() {
        return KickView::Done(
            user,
            vec!["none of the previewed connections is still eligible: nothing sent".into()],
        );
    }
    let done = match app::send_kicks(session, config, &mut state, &snap, send).await {
        Ok(done) => done,
        Err(e) => return KickView::Done(user, vec![format!("nothing sent: {e}")]),
    };
    let mut lines: Vec<String> = done
        .into_iter()
        .map(|d| {
            format!(
                "{} cid {} on {}{}",
                d.result,
                d.plan.cid,
                d.plan.server,
                d.error.map(|e| format!(": {e}")).unwrap_or_default()
            )
        })
        .collect();
    if dropped > 0 {
        lines.push(format!(
            "{dropped} previewed connection(s) no longer eligible: not kicked"
        ));
    }
    KickView::Done(user, lines)
}

/// The previewed connections that the fresh plan still holds (nothing new is added: only what
/// the operator saw is kicked), and how many previewed ones dropped out.
pub fn still_eligible(previewed: &[KickPlan], fresh: Vec<KickPlan>) -> (Vec<KickPlan>, usize) {
    let seen: HashSet<(&str, u64)> = previewed
        .iter()
        .map(|p| (p.server_id.as_str(), p.cid))
        .collect();
    let send: Vec<KickPlan> = fresh
        .into_iter()
        .filter(|p| seen.contains(&(p.server_id.as_str(), p.cid)))
        .collect();
    let dropped = previewed.len() - send.len();
    (send, dropped)
}
