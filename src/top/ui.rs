//! `connwatch top`'s interface state and what each key does: plain data and plain functions,
//! tested without a terminal.

use std::cmp::Ordering;

use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::data::{key_of, Data, Trends, UserKey};
use crate::census::UserCensus;
use crate::kick::KickPlan;

/// The columns the table can be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Connections.
    Connections,
    /// Connections above (or below) the threshold.
    Over,
    /// Connections gained per minute.
    Rate,
    /// Idle connections with no messages.
    Idle0,
    /// Account, then user.
    Account,
    /// User, then account.
    User,
}

impl SortKey {
    const ORDER: [SortKey; 6] = [
        Self::Connections,
        Self::Over,
        Self::Rate,
        Self::Idle0,
        Self::Account,
        Self::User,
    ];

    /// The column's header.
    pub fn header(self) -> &'static str {
        match self {
            Self::Connections => "CONNS",
            Self::Over => "+/-",
            Self::Rate => "/MIN",
            Self::Idle0 => "IDLE0",
            Self::Account => "ACCOUNT",
            Self::User => "USER",
        }
    }

    fn step(self, by: isize) -> Self {
        let i = Self::ORDER.iter().position(|k| *k == self).unwrap_or(0) as isize;
        let n = Self::ORDER.len() as isize;
        Self::ORDER[((i + by).rem_euclid(n)) as usize]
    }

    /// Names sort A→Z by default; numbers largest first.
    fn descending_by_default(self) -> bool {
        !matches!(self, Self::Account | Self::User)
    }
}

/// The kick preview of one user, from `k` to its outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum KickView {
    /// A sweep and the kick policy are running.
    Planning(UserKey),
    /// The eligible connections: nothing is sent until `y`.
    Preview(UserKey, Vec<KickPlan>),
    /// Confirmed: sweeping again and kicking those still eligible.
    Sending(UserKey),
    /// What happened, one line per connection; or nothing to kick, and why.
    Done(UserKey, Vec<String>),
}

/// What is on the screen besides the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// The table alone.
    Table,
    /// Typing a filter after `/`.
    Filter,
    /// The selected user's detail.
    Detail,
    /// A kick preview.
    Kick(KickView),
    /// The keys.
    Help,
}

/// The interface's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Ui {
    /// Sort column.
    pub sort: SortKey,
    /// Largest (or Z) first.
    pub descending: bool,
    /// Only users whose account or user contains this (case-insensitive).
    pub filter: String,
    /// The selected user, kept across refreshes and re-sorting.
    pub selected: Option<UserKey>,
    /// What is shown.
    pub mode: Mode,
}

impl Default for Ui {
    fn default() -> Self {
        Self {
            sort: SortKey::Connections,
            descending: true,
            filter: String::new(),
            selected: None,
            mode: Mode::Table,
        }
    }
}

/// What the event loop must do after a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing beyond redrawing.
    None,
    /// Leave top.
    Quit,
    /// Sweep and plan a kick of this user (the `connwatch kick` policy).
    PlanKick(UserKey),
    /// Kick these connections of this user, those still eligible after a fresh sweep.
    SendKick(UserKey, Vec<KickPlan>),
}

/// One table row: a user with its trend.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// The user's census.
    pub user: &'a UserCensus,
    /// Connections per minute, when known.
    pub rate: Option<f64>,
}

impl Row<'_> {
    /// Connections above the threshold (negative: headroom).
    pub fn over(&self) -> i64 {
        self.user.connections as i64 - self.user.threshold as i64
    }
}

fn matches_filter(u: &UserCensus, filter: &str) -> bool {
    if filter.is_empty() {
        return true;
    }
    let f = filter.to_lowercase();
    [
        Some(&u.account),
        u.account_name.as_ref(),
        Some(&u.user),
        u.user_name.as_ref(),
    ]
    .into_iter()
    .flatten()
    .any(|s| s.to_lowercase().contains(&f))
}

/// The users shown, filtered and sorted as `ui` says.
pub fn rows<'a>(data: &'a Data, trends: &Trends, ui: &Ui, now: DateTime<Utc>) -> Vec<Row<'a>> {
    let mut rows: Vec<Row> = data
        .census
        .users
        .iter()
        .filter(|u| matches_filter(u, &ui.filter))
        .map(|u| Row {
            user: u,
            rate: trends.per_minute(&key_of(u), now),
        })
        .collect();
    let names = |a: &Row, b: &Row| {
        a.user
            .account
            .cmp(&b.user.account)
            .then_with(|| a.user.user.cmp(&b.user.user))
    };
    rows.sort_by(|a, b| {
        let primary = match ui.sort {
            SortKey::Connections => a.user.connections.cmp(&b.user.connections),
            SortKey::Over => a.over().cmp(&b.over()),
            SortKey::Rate => a
                .rate
                .unwrap_or(f64::MIN)
                .partial_cmp(&b.rate.unwrap_or(f64::MIN))
                .unwrap_or(Ordering::Equal),
            SortKey::Idle0 => a.user.idle_zero_msgs.cmp(&b.user.idle_zero_msgs),
            SortKey::Account => names(a, b),
            SortKey::User => a
                .user
                .user
                .cmp(&b.user.user)
                .then_with(|| a.user.account.cmp(&b.user.account)),
        };
        let primary = if ui.descending {
            primary.reverse()
        } else {
            primary
        };
        // Ties: most connections first, then by name, so the order is stable between refreshes.
        primary
            .then_with(|| b.user.connections.cmp(&a.user.connections))
            .then_with(|| names(a, b))
    });
    rows
}

/// The index of the selected user among `rows`, if it is shown.
pub fn selected_index(rows: &[Row], ui: &Ui) -> Option<usize> {
    let sel = ui.selected.as_ref()?;
    rows.iter()
        .position(|r| r.user.account == sel.0 && r.user.user == sel.1)
}

impl Ui {
    /// Handles a key; `rows` are the users shown (see [`rows`]), `page` the rows on a screen.
    pub fn on_key(&mut self, key: KeyEvent, rows: &[Row], page: usize) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        match &self.mode {
            Mode::Filter => {
                match key.code {
                    KeyCode::Enter => self.mode = Mode::Table,
                    KeyCode::Esc => {
                        self.filter.clear();
                        self.mode = Mode::Table;
                    }
                    KeyCode::Backspace => {
                        self.filter.pop();
                    }
                    KeyCode::Char(c) => self.filter.push(c),
                    _ => {}
                }
                return Action::None;
            }
            Mode::Kick(view) => return self.on_kick_key(key, view.clone()),
            Mode::Help => {
                self.mode = Mode::Table;
                return if key.code == KeyCode::Char('q') {
                    Action::Quit
                } else {
                    Action::None
                };
            }
            Mode::Detail | Mode::Table => {}
        }
        let at = selected_index(rows, self);
        let go = |i: usize| {
            rows.get(i.min(rows.len().saturating_sub(1)))
                .map(|r| key_of(r.user))
        };
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc if self.mode == Mode::Detail => self.mode = Mode::Table,
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Down => self.selected = go(at.map_or(0, |i| i + 1)),
            KeyCode::Up => self.selected = go(at.map_or(0, |i| i.saturating_sub(1))),
            KeyCode::PageDown => self.selected = go(at.map_or(0, |i| i + page.max(1))),
            KeyCode::PageUp => self.selected = go(at.map_or(0, |i| i.saturating_sub(page.max(1)))),
            KeyCode::Home => self.selected = go(0),
            KeyCode::End => self.selected = go(usize::MAX),
            KeyCode::Enter if self.mode == Mode::Detail => self.mode = Mode::Table,
            KeyCode::Enter if at.is_some() => self.mode = Mode::Detail,
            KeyCode::Char('/') => self.mode = Mode::Filter,
            KeyCode::Char('?') | KeyCode::Char('h') => self.mode = Mode::Help,
            KeyCode::Char('s') | KeyCode::Char('>') => self.sort_by(self.sort.step(1)),
            KeyCode::Char('S') | KeyCode::Char('<') => self.sort_by(self.sort.step(-1)),
            KeyCode::Char('r') => self.descending = !self.descending,
            KeyCode::Char('c') => self.sort_by(SortKey::Connections),
            KeyCode::Char('o') => self.sort_by(SortKey::Over),
            KeyCode::Char('g') => self.sort_by(SortKey::Rate),
            KeyCode::Char('i') => self.sort_by(SortKey::Idle0),
            KeyCode::Char('a') => self.sort_by(SortKey::Account),
            KeyCode::Char('u') => self.sort_by(SortKey::User),
            KeyCode::Char('k') => {
                if let Some(i) = at {
                    let key = key_of(rows[i].user);
                    self.mode = Mode::Kick(KickView::Planning(key.clone()));
                    return Action::PlanKick(key);
                }
            }
            _ => {}
        }
        Action::None
    }

    /// Keeps the selected user when it is shown, else selects the first row.
    pub fn keep_selection(&mut self, rows: &[Row]) {
        if selected_index(rows, self).is_none() {
            self.selected = rows.first().map(|r| key_of(r.user));
        }
    }

    fn sort_by(&mut self, key: SortKey) {
        self.sort = key;
        self.descending = key.descending_by_default();
    }

    /// In a kick preview only `y` sends, and only from the preview; anything else cancels
    /// (a preview still planning is dropped when its answer comes).
    fn on_kick_key(&mut self, key: KeyEvent, view: KickView) -> Action {
        match (view, key.code) {
            (KickView::Preview(user, plans), KeyCode::Char('y')) => {
                self.mode = Mode::Kick(KickView::Sending(user.clone()));
                Action::SendKick(user, plans)
            }
            // Sending cannot be cancelled: its outcome is shown when it comes.
            (KickView::Sending(_), _) => Action::None,
            (_, KeyCode::Char('q')) => Action::Quit,
            _ => {
                self.mode = Mode::Table;
                Action::None
            }
        }
    }

    /// Takes the answer to a [`Action::PlanKick`] or [`Action::SendKick`]; an answer for a
    /// preview the operator has left is dropped.
    pub fn kick_answer(&mut self, view: KickView) {
        let user = match &view {
            KickView::Planning(u)
            | KickView::Preview(u, _)
            | KickView::Sending(u)
            | KickView::Done(u, _) => u,
        };
        let waiting = match &self.mode {
            Mode::Kick(KickView::Planning(u)) | Mode::Kick(KickView::Sending(u)) => u == user,
            _ => false,
        };
        if waiting {
            self.mode = Mode::Kick(view);
        }
    }
}
