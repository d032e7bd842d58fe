//! The report's figures, drawn with plotters to SVG (inlined in the HTML) and PNG (for the
//! Markdown): accuracy by model with CIs, F1 vs latency, resource use, training curves.
//!
//! Text is rendered with DejaVu Sans bundled in the binary (`assets/DejaVuSans.ttf`), so the PNGs
//! come out the same on machines without system fonts.
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
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
    let ok = *DONE.get_or_init(|| plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT).is_ok());
    if ok { Ok(()) } else { Err(ReportError::Plot { plot: "font", message: "bundled DejaVuSans.ttf did not parse".into() }) }
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
    role: ModelRole,
    training: Training,
    /// exact, category, macro-F1 as (point, lo, hi) in percent.
    pct: [(f64, f64, f64); 3],
    mean_latency_ms: f64,
    peak_eval_mib: Option<f64>,
    peak_train_mib: Option<f64>,
    tokens_per_s: Option<f64>,
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// A figure that can be drawn on any backend.
trait Figure {
    fn name(&self) -> &'static str;
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

fn save<F: Figure>(fig: &F, dir: &Path, title: &str, caption: &str) -> Result<RenderedPlot, ReportError> {
    let name = fig.name();
    let err = |e: &dyn std::fmt::Display| ReportError::Plot { plot: name, message: e.to_string() };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        fig.draw(&root).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io { path: dir.to_path_buf(), source })?;
    // The bitmap backend picks the encoder from the extension, so the temp name ends in `.png`.
    let tmp = dir.join(format!(".{name}.tmp-{}.png", std::process::id()));
    let png = dir.join(format!("{name}.png"));
    {
        let root = BitMapBackend::new(&tmp, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        fig.draw(&root).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, &png).map_err(|source| ReportError::Io { path: png.clone(), source })?;
    let svg_path = dir.join(format!("{name}.svg"));
    write_atomic(&svg_path, svg.as_bytes()).map_err(|source| ReportError::Io { path: svg_path, source })?;
    Ok(RenderedPlot {
        name,
        title: title.to_string(),
        caption: caption.to_string(),
        svg,
        png_file: format!("plots/{name}.png"),
        svg_file: format!("plots/{name}.svg"),
    })
}

/// Draws a model's name (and its kind below) centred under `x` of a chart.
fn x_label<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    (px, py): (i32, i32),
    label: &str,
    second: &str,
) -> DrawResult<DB> {
    let style = font(14).pos(Pos::new(HPos::Center, VPos::Top));
    root.draw(&Text::new(label.to_string(), (px, py + 8), style.clone()))?;
    root.draw(&Text::new(second.to_string(), (px, py + 26), font(12).color(&RGBColor(90, 90, 90)).pos(Pos::new(HPos::Center, VPos::Top))))
}

fn legend_entries<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>>,
    entries: &[(String, RGBColor)],
) -> DrawResult<DB> {
    for (name, colour) in entries {
        let c = *colour;
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .label_font(font(13))
        .draw()
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

/// Exact and category match per model with CI whiskers, grouped large zero-shot vs small.
struct Accuracy<'a>(&'a [Bar]);

impl Figure for Accuracy<'_> {
    fn name(&self) -> &'static str {
        "accuracy"
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let bars = self.0;
        let top = bars.iter().flat_map(|b| [b.pct[0].2, b.pct[1].2]).fold(0.0, f64::max);
        let y_max = (top * 1.25).clamp(10.0, 100.0);
        let n = bars.len() as f64;
        let mut chart = ChartBuilder::on(root)
            .caption("Size vs specialisation: accuracy per model (95% CI)", font(22))
            .margin(16)
            .x_label_area_size(52)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.6..n - 0.4, 0.0..y_max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc("samples correct (%)")
            .axis_desc_style(font(15))
            .label_style(font(13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        for (i, b) in bars.iter().enumerate() {
            let x = i as f64;
            for (k, (dx, colour)) in [(-0.19, b.colour), (0.19, light(b.colour))].into_iter().enumerate() {
                let (p, lo, hi) = b.pct[k];
                let cx = x + dx;
                chart.draw_series(std::iter::once(Rectangle::new([(cx - 0.17, 0.0), (cx + 0.17, p)], colour.filled())))?;
                chart.draw_series(std::iter::once(ErrorBar::new_vertical(cx, lo, p, hi, BLACK.stroke_width(1), 8)))?;
                let (px, py) = chart.backend_coord(&(cx, hi));
                root.draw(&Text::new(format!("{p:.1}"), (px, py - 4), font(12).pos(Pos::new(HPos::Center, VPos::Bottom))))?;
            }
            let (px, py) = chart.backend_coord(&(x, 0.0));
            x_label(root, (px, py), &b.label, b.kind)?;
        }
        let mut entries = kinds_present(bars);
        entries.iter_mut().for_each(|e| e.0 = format!("{}: exact match", e.0));
        entries.push(("lighter bar: 3-character category match".into(), RGBColor(200, 200, 200)));
        legend_entries(&mut chart, &entries)
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
        let x_max = bars.iter().map(|b| b.mean_latency_ms / 1000.0).fold(0.0, f64::max).max(1e-3) * 1.35;
        let y_max = (bars.iter().map(|b| b.pct[2].2).fold(0.0, f64::max) * 1.25).clamp(5.0, 100.0);
        let mut chart = ChartBuilder::on(root)
            .caption("Performance vs cost: macro-F1 against inference latency", font(22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("mean latency per sample (s, batch start to the sample's last token)")
            .y_desc("macro-F1 over occurring codes (%)")
            .axis_desc_style(font(15))
            .label_style(font(13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        // Labels right of their points, pushed apart vertically so they never overlap.
        let mut placed: Vec<(i32, i32)> = Vec::new();
        for b in bars {
            let x = b.mean_latency_ms / 1000.0;
            let (p, lo, hi) = b.pct[2];
            chart.draw_series(std::iter::once(ErrorBar::new_vertical(x, lo, p, hi, b.colour.stroke_width(2), 10)))?;
            chart.draw_series(std::iter::once(Circle::new((x, p), 6, b.colour.filled())))?;
            let (px, mut py) = chart.backend_coord(&(x, p));
            while placed.iter().any(|&(qx, qy)| (qx - px).abs() < 220 && (qy - py).abs() < 18) {
                py += 18;
            }
            placed.push((px, py));
            root.draw(&Text::new(format!("{} ({p:.1})", b.label_full()), (px + 12, py), font(13).pos(Pos::new(HPos::Left, VPos::Center))))?;
        }
        legend_entries(&mut chart, &kinds_present(bars))
    }
}

impl Bar {
    fn label_full(&self) -> String {
        match self.training {
            Training::Finetuned => format!("{} LoRA", self.label),
            Training::Untrained => format!("{} zero-shot", self.label),
        }
    }
}

/// Peak device memory and generation throughput per model, side by side.
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
        let top = bars.iter().flat_map(|b| values(b)).flatten().fold(0.0, f64::max);
        let n = bars.len() as f64;
        let mut chart = ChartBuilder::on(area)
            .caption(title, font(18))
            .margin(14)
            .x_label_area_size(52)
            .y_label_area_size(64)
            .build_cartesian_2d(-0.6..n - 0.4, 0.0..(top * 1.2).max(1.0))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_desc)
            .axis_desc_style(font(14))
            .label_style(font(12))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        for (i, b) in bars.iter().enumerate() {
            let x = i as f64;
            let [main, extra] = values(b);
            let slots: Vec<(f64, f64, RGBColor, Option<f64>)> = match extra {
                Some(_) => vec![(x - 0.19, 0.17, b.colour, main), (x + 0.19, 0.17, light(b.colour), extra)],
                None => vec![(x, 0.3, b.colour, main)],
            };
            for (cx, half, colour, v) in slots {
                let (px, py) = chart.backend_coord(&(cx, v.unwrap_or(0.0)));
                match v {
                    Some(v) => {
                        chart.draw_series(std::iter::once(Rectangle::new([(cx - half, 0.0), (cx + half, v)], colour.filled())))?;
                        let text = if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") };
                        area.draw(&Text::new(text, (px, py - 4), font(12).pos(Pos::new(HPos::Center, VPos::Bottom))))?;
                    }
                    None => area.draw(&Text::new("n/a", (px, py - 4), font(12).pos(Pos::new(HPos::Center, VPos::Bottom))))?,
                }
            }
            let (px, py) = chart.backend_coord(&(x, 0.0));
            x_label(area, (px, py), &b.label, b.kind)?;
        }
        Ok(())
    }
}

impl Figure for Efficiency<'_> {
    fn name(&self) -> &'static str {
        "efficiency"
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        self.panel(&left, "Peak device memory (lighter: LoRA training)", "peak memory (GiB)", &|b| {
            [b.peak_eval_mib.map(|m| m / 1024.0), b.peak_train_mib.map(|m| m / 1024.0)]
        })?;
        self.panel(&right, "Generation throughput", "generated tokens per second", &|b| [b.tokens_per_s, None])
    }
}

/// One training run's curve.
struct Curve {
    label: String,
    train: Vec<(f64, f64)>,
    validation: Vec<(f64, f64)>,
}

/// Training (solid) and validation (dashed, dots) loss per finetuned SLM.
struct Training_<'a>(&'a [Curve]);

impl Figure for Training_<'_> {
    fn name(&self) -> &'static str {
        "training_loss"
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        let all = self.0.iter().flat_map(|c| c.train.iter().chain(&c.validation));
        let (x_max, y_max) = all.fold((1.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
        let mut chart = ChartBuilder::on(root)
            .caption("LoRA training: training and validation loss", font(22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max * 1.02, 0.0..(y_max * 1.1).max(0.1))?;
        chart
            .configure_mesh()
            .x_desc("optimiser step")
            .y_desc("cross-entropy loss (answer tokens, nats)")
            .axis_desc_style(font(15))
            .label_style(font(13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()?;
        for (i, c) in self.0.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(c.train.iter().copied(), colour.stroke_width(2)))?
                .label(format!("{}: train", c.label))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], colour.stroke_width(2)));
            if !c.validation.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(c.validation.iter().copied(), 8, 5, colour.stroke_width(2)))?
                    .label(format!("{}: validation", c.label))
                    .legend(move |(x, y)| Circle::new((x + 9, y), 4, colour.filled()));
                chart.draw_series(c.validation.iter().map(|p| Circle::new(*p, 4, colour.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(180, 180, 180))
            .label_font(font(13))
            .draw()
    }
}

/// Draws every figure the inputs allow into `dir` (`<dir>/<name>.png` and `.svg`).
pub fn draw_all(input: &ReportInput, analysis: &Analysis, dir: &Path) -> Result<Vec<RenderedPlot>, ReportError> {
    ensure_font()?;
    let bars: Vec<Bar> = analysis
        .models
        .iter()
        .map(|m| {
            let perf = input.models.iter().find(|i| i.key.key == m.key).map(|i| i.perf.clone()).unwrap_or_default();
            let e = |k: usize| (m.estimates[k].point * 100.0, m.estimates[k].lo * 100.0, m.estimates[k].hi * 100.0);
            let key = input.models.iter().find(|i| i.key.key == m.key).map(|i| i.key.label.clone()).unwrap_or_default();
            Bar {
                label: key,
                kind: kind_name(m.role, m.training),
                colour: kind_colour(m.role, m.training),
                role: m.role,
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
    if bars.iter().any(|b| b.peak_eval_mib.is_some() || b.peak_train_mib.is_some() || b.tokens_per_s.is_some()) {
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
            train: m.curve.iter().filter_map(|p| Some((p.step as f64, p.train_loss?))).collect(),
            validation: m.curve.iter().filter_map(|p| Some((p.step as f64, p.validation_loss?))).collect(),
        })
        .collect();
    if !curves.is_empty() {
        out.push(save(
            &Training_(&curves),
            dir,
            "Training curves",
            "Loss on the answer tokens per optimiser step: training (solid) and validation (dashed, dots).",
        )?);
    }
    Ok(out)
}
