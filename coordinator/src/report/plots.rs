//! The report's figures, drawn with plotters to SVG (inlined in the HTML) and PNG (for the
//! Markdown): accuracy by model with CIs, F1 vs latency, resource use, training curves.
//!
//! Text is rendered with DejaVu Sans bundled in the binary (`assets/DejaVuSans.ttf`), so the PNGs
//! come out the same on machines without system fonts.
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::element::ErrorBar;
use plotters::prelude::*;
use plotters::series::DashedLineSeries;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use shared::fsutil::write_atomic;
use shared::task::ModelRole;

use super::ReportError;
use super::analysis::Analysis;
use super::input::{ReportInput, Training};

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FONT_NAME: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 560);

/// Registers the bundled font once per process (plotters keeps a global font table).
fn ensure_font() -> Result<(), ReportError> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE
        .get_or_init(|| plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT).is_ok());
    if ok {
        Ok(())
    } else {
        Err(ReportError::Plot {
            plot: "font",
            message: "bundled DejaVuSans.ttf did not parse".into(),
        })
    }
}

fn font(size: u32) -> TextStyle<'static> {
    (FONT_NAME, size).into_font().color(&BLACK)
}

/// The colour that says which side of the question a model is on.
fn kind_colour(role: ModelRole, training: Training) -> RGBColor {
    match (role, training) {
        (ModelRole::Llm, _) => RGBColor(31, 119, 180),
        (ModelRole::Slm, Training::Finetuned) => RGBColor(230, 115, 0),
        (ModelRole::Slm, Training::Untrained) => RGBColor(120, 120, 120),
    }
}

fn kind_name(role: ModelRole, training: Training) -> &'static str {
    match (role, training) {
        (ModelRole::Llm, _) => "large, zero-shot",
        (ModelRole::Slm, Training::Finetuned) => "small, LoRA-finetuned",
        (ModelRole::Slm, Training::Untrained) => "small, zero-shot",
    }
}

/// Lighter shade of a colour, opaque (so PNG and SVG look alike).
fn light(c: RGBColor) -> RGBColor {
    let m = |x: u8| (x as u16 + (255 - x as u16) * 55 / 100) as u8;
    RGBColor(m(c.0), m(c.1), m(c.2))
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(230, 115, 0),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
];

/// One model as the plots see it.
#[derive(Debug, Clone)]
struct Bar {
    label: String,
    kind: &'static str,
    colour: RGBColor,
    training: Training,
    /// exact, category, macro-F1 as (point, lo, hi) in percent; `None` = not measured.
    pct: [Option<(f64, f64, f64)>; 3],
    mean_latency_ms: Option<f64>,
    peak_eval_mib: Option<f64>,
    peak_train_mib: Option<f64>,
    tokens_per_s: Option<f64>,
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A figure that can be drawn on any backend.
trait Figure {
    fn name(&self) -> &'static str;
    fn size(&self) -> (u32, u32) {
        SIZE
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

/// A written figure: the SVG text (inlined in the HTML) and the files' names relative to the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RenderedPlot {
    pub name: &'static str,
    pub title: String,
    pub caption: String,
    pub svg: String,
    pub png_file: String,
    pub svg_file: String,
}

fn save<F: Figure>(
    fig: &F,
    dir: &Path,
    title: &str,
    caption: &str,
) -> Result<RenderedPlot, ReportError> {
    let name = fig.name();
    let size = fig.size();
    let err = |e: &dyn std::fmt::Display| ReportError::Plot {
        plot: name,
        message: e.to_string(),
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        fig.draw(&root).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    // The bitmap backend picks the encoder from the extension, so the temp name ends in `.png`.
    let tmp = dir.join(format!(".{name}.tmp-{}.png", std::process::id()));
    let png = dir.join(format!("{name}.png"));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        fig.draw(&root).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, &png).map_err(|source| ReportError::Io {
        path: png.clone(),
        source,
    })?;
    let svg_path = dir.join(format!("{name}.svg"));
    write_atomic(&svg_path, svg.as_bytes()).map_err(|source| ReportError::Io {
        path: svg_path,
        source,
    })?;
    Ok(RenderedPlot {
        name,
        title: title.to_string(),
        caption: caption.to_string(),
        svg,
        png_file: format!("plots/{name}.png"),
        svg_file: format!("plots/{name}.svg"),
    })
}

/// Draws text at an absolute backend pixel (what `backend_coord` returns) on a sub-area.
fn text_at<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    text: String,
    (px, py): (i32, i32),
    style: TextStyle<'static>,
) -> DrawResult<DB> {
    let (bx, by) = area.get_base_pixel();
    area.draw(&Text::new(text, (px - bx, py - by), style))
}

fn centred(size: u32, pos: VPos) -> TextStyle<'static> {
    font(size).pos(Pos::new(HPos::Center, pos))
}

/// A model's label and its kind, centred under `x` of a chart.
fn x_label<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    (px, py): (i32, i32),
    bar: &Bar,
) -> DrawResult<DB> {
    text_at(
        area,
        bar.label.clone(),
        (px, py + 8),
        centred(13, VPos::Top),
    )?;
    let second = match bar.training {
        Training::Finetuned => "LoRA",
        Training::Untrained => "zero-shot",
    };
    text_at(
        area,
        second.to_string(),
        (px, py + 25),
        centred(12, VPos::Top).color(&RGBColor(90, 90, 90)),
    )
}

/// A legend as one row of swatches (never over the data).
fn legend_row<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(String, RGBColor)],
) -> DrawResult<DB> {
    let style = font(13).pos(Pos::new(HPos::Left, VPos::Center));
    let widths: Vec<i32> = entries
        .iter()
        .map(|(t, _)| {
            area.estimate_text_size(t, &style)
                .map(|(w, _)| w as i32 + 44)
        })
        .collect::<Result<_, _>>()?;
    let total: i32 = widths.iter().sum();
    let (w, h) = area.dim_in_pixel();
    let mut x = ((w as i32 - total) / 2).max(4);
    let y = h as i32 / 2;
    for ((text, colour), width) in entries.iter().zip(widths) {
        area.draw(&Rectangle::new(
            [(x, y - 7), (x + 14, y + 7)],
            colour.filled(),
        ))?;
        area.draw(&Text::new(text.clone(), (x + 20, y), style.clone()))?;
        x += width;
    }
    Ok(())
}

fn kinds_present(bars: &[Bar]) -> Vec<(String, RGBColor)> {
    let mut out: Vec<(String, RGBColor)> = Vec::new();
    for b in bars {
        if !out.iter().any(|(n, _)| n == b.kind) {
            out.push((b.kind.to_string(), b.colour));
        }
    }
    out
}

/// Title, legend row, and the area left for the chart.
fn frame<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    legend: &[(String, RGBColor)],
) -> Result<DrawingArea<DB, Shift>, DrawingAreaErrorKind<DB::ErrorType>> {
    let body = root.margin(10, 0, 0, 0).titled(title, font(22))?;
    if legend.is_empty() {
        return Ok(body);
    }
    let (strip, rest) = body.split_vertically(30);
    legend_row(&strip, legend)?;
    Ok(rest)
}

fn mesh<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    x_desc: &str,
    y_desc: &str,
    x_labels: bool,
) -> DrawResult<DB> {
    let fmt = |v: &f64| {
        if v.abs() >= 10.0 || v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    };
    let mut m = chart.configure_mesh();
    m.y_desc(y_desc)
        .axis_desc_style(font(15))
        .label_style(font(13))
        .max_light_lines(1)
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt);
    if x_labels {
        m.x_desc(x_desc);
    } else {
        m.disable_x_mesh().x_labels(0);
    }
    m.draw()
}

/// Exact and category match per model with CI whiskers, grouped large zero-shot vs small.
struct Accuracy<'a>(&'a [Bar]);

impl Figure for Accuracy<'_> {
    fn name(&self) -> &'static str {
        "accuracy"
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let bars = self.0;
        let mut legend = kinds_present(bars);
        legend
            .iter_mut()
            .for_each(|e| e.0 = format!("{}: exact match", e.0));
        legend.push((
            "lighter: 3-char category match".into(),
            RGBColor(200, 200, 200),
        ));
        let body = frame(
            root,
            "Size vs specialisation: accuracy per model (95% CI)",
            &legend,
        )?;
        let top = bars
            .iter()
            .flat_map(|b| [b.pct[0], b.pct[1]])
            .flatten()
            .fold(0.0, |m, e| f64::max(m, e.2));
        let y_max = (top * 1.12 + 2.0).clamp(10.0, 104.0);
        let n = bars.len() as f64;
        let mut chart = ChartBuilder::on(&body)
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.6..n - 0.4, 0.0..y_max)?;
        mesh(&mut chart, "", "samples correct (%)", false)?;
        for (i, b) in bars.iter().enumerate() {
            let x = i as f64;
            for (k, (dx, colour)) in [(-0.19, b.colour), (0.19, light(b.colour))]
                .into_iter()
                .enumerate()
            {
                let cx = x + dx;
                let Some((p, lo, hi)) = b.pct[k] else {
                    text_at(
                        &body,
                        "n/a".into(),
                        chart.backend_coord(&(cx, 0.0)),
                        centred(12, VPos::Bottom),
                    )?;
                    continue;
                };
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(cx - 0.17, 0.0), (cx + 0.17, p)],
                    colour.filled(),
                )))?;
                // A point-only estimate (no predictions) has no interval to draw.
                if hi > lo {
                    chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                        cx,
                        lo,
                        p,
                        hi,
                        BLACK.stroke_width(1),
                        8,
                    )))?;
                }
                text_at(
                    &body,
                    format!("{p:.1}"),
                    chart.backend_coord(&(cx, hi)),
                    centred(12, VPos::Bottom),
                )?;
            }
            x_label(&body, chart.backend_coord(&(x, 0.0)), b)?;
        }
        Ok(())
    }
}

/// Macro-F1 against mean per-sample latency.
struct Cost<'a>(&'a [Bar]);

impl Figure for Cost<'_> {
    fn name(&self) -> &'static str {
        "cost"
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let bars = self.0;
        let body = frame(
            root,
            "Performance vs cost: macro-F1 against inference latency",
            &kinds_present(bars),
        )?;
        // Room on the right for the point labels.
        // Only models with both a macro-F1 and a latency can be placed.
        let points: Vec<(&Bar, f64, (f64, f64, f64))> = bars
            .iter()
            .filter_map(|b| Some((b, b.mean_latency_ms?, b.pct[2]?)))
            .collect();
        let x_max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.4;
        let y_max =
            (points.iter().map(|p| p.2.2).fold(0.0, f64::max) * 1.15 + 2.0).clamp(5.0, 104.0);
        let mut chart = ChartBuilder::on(&body)
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        mesh(
            &mut chart,
            "mean latency per sample (ms, from its batch's start to its last token)",
            "macro-F1 over occurring codes (%)",
            true,
        )?;
        let mut anchors = Vec::new();
        for (b, x, (p, lo, hi)) in &points {
            let (x, p) = (*x, *p);
            chart.draw_series(std::iter::once(ErrorBar::new_vertical(
                x,
                *lo,
                p,
                *hi,
                b.colour.stroke_width(2),
                10,
            )))?;
            chart.draw_series(std::iter::once(Circle::new((x, p), 6, b.colour.filled())))?;
            anchors.push(chart.backend_coord(&(x, p)));
        }
        // Labels right of their points, spread vertically inside the plot so none overlap; a
        // label moved away from its point gets a thin leader line.
        let top = chart.backend_coord(&(0.0, y_max)).1 + 8;
        let bottom = chart.backend_coord(&(0.0, 0.0)).1 - 8;
        let ys = spread(
            &anchors.iter().map(|a| a.1).collect::<Vec<_>>(),
            18,
            top,
            bottom,
        );
        for (((b, _, (p, _, _)), &(px, py)), &ly) in points.iter().zip(&anchors).zip(&ys) {
            let (bx, by) = body.get_base_pixel();
            if (ly - py).abs() > 4 {
                body.draw(&PathElement::new(
                    [(px + 7 - bx, py - by), (px + 14 - bx, ly - by)],
                    RGBColor(150, 150, 150).stroke_width(1),
                ))?;
            }
            let style = font(13).pos(Pos::new(HPos::Left, VPos::Center));
            text_at(
                &body,
                format!("{} ({p:.1})", b.label_full()),
                (px + 16, ly),
                style,
            )?;
        }
        Ok(())
    }
}

/// Label positions near `wanted` (pixels, any order), at least `gap` apart, kept within
/// `[top, bottom]` where there is room: a downward pass in sorted order, then an upward one when
/// the last label ran past the bottom.
fn spread(wanted: &[i32], gap: i32, top: i32, bottom: i32) -> Vec<i32> {
    let mut order: Vec<usize> = (0..wanted.len()).collect();
    order.sort_by_key(|&i| (wanted[i], i));
    let mut ys: Vec<i32> = order
        .iter()
        .map(|&i| wanted[i].clamp(top, bottom))
        .collect();
    for k in 1..ys.len() {
        ys[k] = ys[k].max(ys[k - 1] + gap);
    }
    if let Some(last) = ys.last_mut()
        && *last > bottom
    {
        *last = bottom;
        for k in (0..ys.len() - 1).rev() {
            ys[k] = ys[k].min(ys[k + 1] - gap);
        }
    }
    let mut out = vec![0; wanted.len()];
    for (k, &i) in order.iter().enumerate() {
        out[i] = ys[k];
    }
    out
}

impl Bar {
    fn label_full(&self) -> String {
        match self.training {
            Training::Finetuned => format!("{} LoRA", self.label),
            Training::Untrained => format!("{} zero-shot", self.label),
        }
    }
}

/// Peak device memory and generation throughput per model, one above the other.
struct Efficiency<'a>(&'a [Bar]);

impl Efficiency<'_> {
    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        title: &str,
        y_desc: &str,
        values: &dyn Fn(&Bar) -> [Option<f64>; 2],
    ) -> DrawResult<DB> {
        let bars = self.0;
        let top = bars.iter().flat_map(values).flatten().fold(0.0, f64::max);
        let n = bars.len() as f64;
        let area = area.titled(title, font(17))?;
        let mut chart = ChartBuilder::on(&area)
            .margin(10)
            .x_label_area_size(46)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.6..n - 0.4, 0.0..(top * 1.18).max(1.0))?;
        mesh(&mut chart, "", y_desc, false)?;
        for (i, b) in bars.iter().enumerate() {
            let x = i as f64;
            let [main, extra] = values(b);
            let slots: Vec<(f64, f64, RGBColor, Option<f64>)> = match extra {
                Some(_) => vec![
                    (x - 0.19, 0.17, b.colour, main),
                    (x + 0.19, 0.17, light(b.colour), extra),
                ],
                None => vec![(x, 0.3, b.colour, main)],
            };
            for (cx, half, colour, v) in slots {
                let at = chart.backend_coord(&(cx, v.unwrap_or(0.0)));
                let text = match v {
                    Some(v) => {
                        chart.draw_series(std::iter::once(Rectangle::new(
                            [(cx - half, 0.0), (cx + half, v)],
                            colour.filled(),
                        )))?;
                        if v >= 100.0 {
                            format!("{v:.0}")
                        } else {
                            format!("{v:.1}")
                        }
                    }
                    None => "n/a".to_string(),
                };
                text_at(&area, text, (at.0, at.1 - 3), centred(12, VPos::Bottom))?;
            }
            x_label(&area, chart.backend_coord(&(x, 0.0)), b)?;
        }
        Ok(())
    }
}

impl Figure for Efficiency<'_> {
    fn name(&self) -> &'static str {
        "efficiency"
    }

    fn size(&self) -> (u32, u32) {
        (SIZE.0, 860)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let body = frame(root, "Resource efficiency", &kinds_present(self.0))?;
        let (top, bottom) = body.split_vertically(400);
        self.panel(
            &top,
            "Peak device memory (lighter bar: during LoRA training)",
            "peak memory (GiB)",
            &|b| {
                [
                    b.peak_eval_mib.map(|m| m / 1024.0),
                    b.peak_train_mib.map(|m| m / 1024.0),
                ]
            },
        )?;
        self.panel(
            &bottom,
            "Generation throughput (evaluation)",
            "generated tokens / s",
            &|b| [b.tokens_per_s, None],
        )
    }
}

/// One training run's curve.
struct Curve {
    label: String,
    train: Vec<(f64, f64)>,
    validation: Vec<(f64, f64)>,
}

/// Training (solid) and validation (dashed, dots) loss per finetuned SLM.
struct LossCurves<'a>(&'a [Curve]);

impl Figure for LossCurves<'_> {
    fn name(&self) -> &'static str {
        "training_loss"
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let mut legend = Vec::new();
        for (i, c) in self.0.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            legend.push((format!("{}: training (solid)", c.label), colour));
            if !c.validation.is_empty() {
                legend.push((format!("{}: validation (dashed, dots)", c.label), colour));
            }
        }
        let body = frame(root, "LoRA training: training and validation loss", &legend)?;
        let all = self
            .0
            .iter()
            .flat_map(|c| c.train.iter().chain(&c.validation));
        let (x_max, y_max) = all.fold((1.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
        let mut chart = ChartBuilder::on(&body)
            .margin(14)
            .x_label_area_size(48)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max * 1.02, 0.0..(y_max * 1.1).max(0.1))?;
        mesh(
            &mut chart,
            "optimiser step",
            "cross-entropy loss on answer tokens",
            true,
        )?;
        for (i, c) in self.0.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart.draw_series(LineSeries::new(
                c.train.iter().copied(),
                colour.stroke_width(2),
            ))?;
            if !c.validation.is_empty() {
                chart.draw_series(DashedLineSeries::new(
                    c.validation.iter().copied(),
                    8,
                    5,
                    colour.stroke_width(2),
                ))?;
                chart.draw_series(
                    c.validation
                        .iter()
                        .map(|p| Circle::new(*p, 4, colour.filled())),
                )?;
            }
        }
        Ok(())
    }
}

/// Draws every figure the inputs allow into `dir` (`<dir>/<name>.png` and `.svg`).
pub fn draw_all(
    input: &ReportInput,
    analysis: &Analysis,
    dir: &Path,
) -> Result<Vec<RenderedPlot>, ReportError> {
    ensure_font()?;
    let bars: Vec<Bar> = analysis
        .models
        .iter()
        .map(|m| {
            let perf = input
                .models
                .iter()
                .find(|i| i.key.key == m.key)
                .map(|i| i.perf.clone())
                .unwrap_or_default();
            let e =
                |k: usize| m.estimates[k].map(|e| (e.point * 100.0, e.lo * 100.0, e.hi * 100.0));
            let key = input
                .models
                .iter()
                .find(|i| i.key.key == m.key)
                .map(|i| i.key.label.clone())
                .unwrap_or_default();
            Bar {
                label: key,
                kind: kind_name(m.role, m.training),
                colour: kind_colour(m.role, m.training),
                training: m.training,
                pct: [e(0), e(1), e(2)],
                mean_latency_ms: m.mean_latency_ms,
                peak_eval_mib: perf.peak_memory_mib,
                peak_train_mib: perf.train_peak_memory_mib,
                tokens_per_s: perf.tokens_per_s,
            }
        })
        .collect();
    let mut out = Vec::new();
    if bars.is_empty() {
        return Ok(out);
    }
    out.push(save(
        &Accuracy(&bars),
        dir,
        "Size vs specialisation",
        "Exact match (dark) and 3-character category match (light) per model; whiskers are percentile-bootstrap 95% CIs.",
    )?);
    out.push(save(
        &Cost(&bars),
        dir,
        "Performance vs cost",
        "Macro-F1 (95% CI) against mean per-sample latency; up and to the left is better.",
    )?);
    if bars.iter().any(|b| {
        b.peak_eval_mib.is_some() || b.peak_train_mib.is_some() || b.tokens_per_s.is_some()
    }) {
        out.push(save(
            &Efficiency(&bars),
            dir,
            "Resource efficiency",
            "Peak device memory of evaluation (and of LoRA training, lighter) and generated tokens per second (no padding, no prompt).",
        )?);
    }
    let curves: Vec<Curve> = input
        .models
        .iter()
        .filter(|m| m.key.role == ModelRole::Slm && !m.curve.is_empty())
        .map(|m| Curve {
            label: m.key.label.clone(),
            train: m
                .curve
                .iter()
                .filter_map(|p| Some((p.step as f64, p.train_loss?)))
                .collect(),
            validation: m
                .curve
                .iter()
                .filter_map(|p| Some((p.step as f64, p.validation_loss?)))
                .collect(),
        })
        .collect();
    if !curves.is_empty() {
        out.push(save(
            &LossCurves(&curves),
            dir,
            "Training curves",
            "Loss on the answer tokens per optimiser step: training (solid) and validation (dashed, dots).",
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::spread;

    #[test]
    fn labels_spread_apart_and_stay_inside() {
        // Three labels wanted at the same height near the bottom: pushed up, 18 px apart.
        assert_eq!(spread(&[95, 95, 95], 18, 0, 100), vec![64, 82, 100]);
        // Far-apart labels stay where they were wanted.
        assert_eq!(spread(&[50, 10], 18, 0, 100), vec![50, 10]);
    }
}
