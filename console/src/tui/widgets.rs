//! Drawing pieces the components share: styles, pane borders, right-aligned and stale
//! figures, column splitting, centred boxes, word-exact wrapping and the scrolling detail box.
//!
//! No state, no I/O, no clock. Invariants: a box is never shorter than its wrapped content
//! unless the terminal is (then it scrolls, marking each cut with `▲ n more` / `▼ n more`);
//! only the 16 basic colours and bold/reverse/dim are used.

use ratatui::Frame;
use ratatui::layout::{Alignment, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Clear, Paragraph, Wrap};

use super::data::Data;
use super::health::Health;
use crate::format::fit;

/// Bold: headers, labels.
pub fn bold() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

/// The selected row.
pub fn selected() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

/// A pane's border with its title (cyan when it has the focus).
pub fn pane_block(title: &str, width: u16, focused: bool) -> Block<'static> {
    // The title is elided to the border it sits on (2 corners, 2 spaces around it).
    let title = fit::end(title, usize::from(width.saturating_sub(4)));
    let block = Block::default()
        .borders(Borders::ALL)
        .title(format!(" {title} "));
    if focused {
        block.border_style(Style::default().fg(Color::Cyan))
    } else {
        block
    }
}

/// A right-aligned cell.
pub fn right(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).alignment(Alignment::Right))
}

/// A live figure's cell: right-aligned, dimmed when it is not current (`stale`).
pub fn figure(s: String, stale: bool) -> Cell<'static> {
    if stale {
        right(s).style(stale_style())
    } else {
        right(s)
    }
}

/// Figures the daemon can no longer confirm: dark grey, dimmed.
pub fn stale_style() -> Style {
    Style::default()
        .fg(Color::DarkGray)
        .add_modifier(Modifier::DIM)
}

/// While the daemon is unreachable: the line that says so and how old the figures are.
pub fn stale_line(data: &Data, width: usize) -> Option<Line<'static>> {
    let since = data.stale_since()?;
    // The reason is on the status line; this says what it means for the figures.
    let text = format!(" daemon unreachable: values from {since} UTC, not live; retrying");
    Some(Line::from(Span::styled(
        fit::end(&text, width),
        Style::default()
            .fg(Color::White)
            .bg(Color::Red)
            .add_modifier(Modifier::BOLD),
    )))
}

/// A fixed-width table column: header and width.
pub struct Col {
    /// Header.
    pub name: &'static str,
    /// Width in columns.
    pub width: u16,
}

/// Splits `flex` columns between two text columns whose widest values need `a` and `b`:
/// each gets what it needs when both fit; otherwise the one that needs less than half keeps
/// it and the other gets the rest; otherwise half each.
pub fn split(flex: usize, a: usize, b: usize) -> (usize, usize) {
    let half = flex / 2;
    if a + b <= flex || b <= half {
        (flex - b, b)
    } else if a <= flex - half {
        (a, flex - a)
    } else {
        (flex - half, half)
    }
}

/// A route row's colour for its health.
pub fn health_style(h: Health) -> Style {
    match h {
        Health::Ok => Style::default(),
        Health::Warning => Style::default().fg(Color::Yellow),
        Health::Error => Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
    }
}

/// A bordered box centred in `area`, cleared underneath.
pub fn popup(frame: &mut Frame<'_>, area: Rect, title: &str, text: Vec<Line<'_>>, w: u16, h: u16) {
    let rect = centered(area, w, h);
    frame.render_widget(Clear, rect);
    let title = fit::end(title, usize::from(rect.width.saturating_sub(4)));
    frame.render_widget(
        Paragraph::new(text).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {title} "))
                .border_style(Style::default().fg(Color::Cyan)),
        ),
        rect,
    );
}

/// A `w` x `h` rectangle centred in `area` (clipped to it).
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// Rows `lines` take when wrapped at `width`.
pub fn wrapped_height(lines: &[Line<'_>], width: u16) -> u16 {
    let w = usize::from(width.max(1));
    lines
        .iter()
        .map(|l| l.width().max(1).div_ceil(w) as u16)
        .sum()
}

/// "label   value" lines for the detail boxes; values wrap, never cut.
pub fn field(label: &str, value: impl Into<String>) -> Line<'static> {
    Line::from(vec![
        Span::styled(format!("{label:<15}"), bold()),
        Span::raw(value.into()),
    ])
}

/// `line` broken into rows of at most `width` columns, at a space where there is one (a long
/// value wraps, it is never cut), each piece keeping its style. Breaking here rather than in
/// the paragraph makes the row count exact, so a box is never shorter than its content.
pub fn wrap_line(line: &Line<'static>, width: usize) -> Vec<Line<'static>> {
    use unicode_width::UnicodeWidthChar;
    let width = width.max(1);
    let chars: Vec<(char, Style)> = line
        .spans
        .iter()
        .flat_map(|s| s.content.chars().map(move |c| (c, s.style)))
        .collect();
    let mut rows: Vec<&[(char, Style)]> = Vec::new();
    let mut start = 0;
    while start < chars.len() || rows.is_empty() {
        let (mut end, mut used, mut space) = (start, 0, None);
        while let Some(&(c, _)) = chars.get(end) {
            let cw = c.width().unwrap_or(0);
            if used + cw > width {
                break;
            }
            used += cw;
            if c == ' ' {
                space = Some(end);
            }
            end += 1;
        }
        let mut next = end;
        if end < chars.len() {
            if chars[end].0 == ' ' {
                next = end + 1; // the break falls on a space: it goes
            } else if let Some(sp) = space.filter(|&sp| sp > start) {
                end = sp + 1;
                next = end;
            } else if end == start {
                end = start + 1; // wider than the row: one character per row
                next = end;
            }
        }
        rows.push(&chars[start..end]);
        start = next;
    }
    rows.into_iter()
        .map(|row| {
            let mut spans: Vec<Span<'static>> = Vec::new();
            for &(c, style) in row {
                match spans.last_mut() {
                    Some(last) if last.style == style => last.content.to_mut().push(c),
                    _ => spans.push(Span::styled(c.to_string(), style)),
                }
            }
            Line::from(spans).style(line.style)
        })
        .collect()
}

/// A detail box (listener or route) as wide as the terminal allows (100 at most) and as tall
/// as its content, wrapped. When the content is taller than the terminal it scrolls to show
/// `focus` (an index into `lines`, the selected backend) with the rows around it, and a
/// `▲ n more` / `▼ n more` line where rows are cut. The keys are on the bottom border; while
/// the daemon is unreachable the first row says the figures are old.
pub fn detail_popup(
    data: &Data,
    frame: &mut Frame<'_>,
    area: Rect,
    title: &str,
    lines: Vec<Line<'static>>,
    focus: Option<usize>,
    keys: &str,
) {
    let w = area.width.min(100);
    let inner_w = usize::from(w.saturating_sub(2));
    let stale = stale_line(data, inner_w);
    let mut rows: Vec<Line<'static>> = Vec::new();
    let mut focus_rows = 0..0;
    for (i, line) in lines.iter().enumerate() {
        let start = rows.len();
        rows.extend(wrap_line(line, inner_w));
        if focus == Some(i) {
            focus_rows = start..rows.len();
        }
    }
    let fixed = usize::from(stale.is_some());
    let h = (rows.len() + fixed + 2).min(usize::from(area.height));
    let room = h.saturating_sub(2 + fixed);
    let (total, more) = (rows.len(), |n: usize, up: bool| {
        let arrow = if up { '▲' } else { '▼' };
        Line::from(Span::styled(
            format!("{arrow} {n} more"),
            Style::default().fg(Color::Cyan),
        ))
    });
    let mut shown: Vec<Line<'static>> = stale.into_iter().collect();
    if total <= room {
        shown.extend(rows);
    } else {
        // One marker when the focus is near an end, two in the middle; the focus is centred
        // in what is left (or its start shown, if it alone is taller than that).
        let (offset, len) = if focus_rows.end <= room.saturating_sub(1) {
            (0, room.saturating_sub(1))
        } else if focus_rows.start >= total - room.saturating_sub(1) {
            let len = room.saturating_sub(1);
            (total - len, len)
        } else {
            let len = room.saturating_sub(2).max(1);
            let centred = focus_rows
                .start
                .saturating_sub(len.saturating_sub(focus_rows.len()) / 2);
            (centred.clamp(1, total - len - 1), len)
        };
        if offset > 0 {
            shown.push(more(offset, true));
        }
        shown.extend(rows.into_iter().skip(offset).take(len));
        if offset + len < total {
            shown.push(more(total - offset - len, false));
        }
    }
    let rect = centered(area, w, h as u16);
    frame.render_widget(Clear, rect);
    let title = fit::end(title, usize::from(rect.width.saturating_sub(4)));
    let keys = fit::end(keys, usize::from(rect.width.saturating_sub(4)));
    frame.render_widget(
        Paragraph::new(shown).block(
            Block::default()
                .borders(Borders::ALL)
                .title(format!(" {title} "))
                .title_bottom(Line::from(format!(" {keys} ")).alignment(Alignment::Center))
                .border_style(Style::default().fg(Color::Cyan)),
        ),
        rect,
    );
}

/// What the routes table shows in place of the backend of a route that is not served.
pub const NOT_SERVED: &str = "not served";

/// A route that is stored but not served: red, as a route in error.
pub fn not_served_style() -> Style {
    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
}
