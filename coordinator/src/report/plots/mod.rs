//! The report's figures, drawn with plotters to SVG (inlined in the HTML) and PNG (for the
//! Markdown): accuracy by model with CIs, F1 vs latency, resource use, training curves.
//!
//! Text is rendered with DejaVu Sans bundled in the binary (`assets/DejaVuSans.ttf`), so the PNGs
//! come out the same on machines without system fonts.
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use shared::fsutil::{AtomicPath, write_atomic};
use shared::task::ModelRole;

use super::ReportError;
use super::analysis::Analysis;
use super::input::{ReportInput, Training};

mod figures;

use figures::{Accuracy, Cost, Curve, Efficiency, LossCurves};

static FONT: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");
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
    let png = dir.join(format!("{name}.png"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    // The bitmap backend writes to a path and picks the encoder from its extension.
    let tmp = AtomicPath::create(&png, "png").map_err(io(&png))?;
    {
        let root = BitMapBackend::new(tmp.path(), size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        fig.draw(&root).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    tmp.commit().map_err(io(&png))?;
    let svg_path = dir.join(format!("{name}.svg"));
    write_atomic(&svg_path, svg.as_bytes()).map_err(io(&svg_path))?;
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

/// Draws every figure the inputs allow into `dir` (`<dir>/<name>.png` and `.svg`).
pub fn draw_all(
    input: &ReportInput,
    analysis: &Analysis,
    dir: &Path,
) -> Result<Vec<RenderedPlot>, ReportError> {
    ensure_font()?;
    let conf = (analysis.bootstrap.confidence * 100.0).round();
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
        &Accuracy(&bars, conf),
        dir,
        "Size vs specialisation",
        &format!("Exact match (dark) and 3-character category match (light) per model; whiskers are percentile-bootstrap {conf}% CIs."),
    )?);
    out.push(save(
        &Cost(&bars),
        dir,
        "Performance vs cost",
        &format!(
            "Macro-F1 ({conf}% CI) against mean per-sample latency; up and to the left is better."
        ),
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
