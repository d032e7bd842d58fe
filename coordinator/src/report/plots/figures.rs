//! The four figures: accuracy with CIs, macro-F1 against latency, memory and throughput, and
//! training curves. Each draws on any plotters backend (SVG and PNG from the same code).
use plotters::coord::Shift;
use plotters::element::ErrorBar;
use plotters::prelude::*;
use plotters::series::DashedLineSeries;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{
    Bar, DrawResult, Figure, PALETTE, SIZE, centred, font, frame, kinds_present, light, mesh,
    text_at, x_label,
};
use crate::report::input::Training;

/// Exact and category match per model with CI whiskers, grouped large zero-shot vs small.
/// The bars and the CI level in percent (e.g. 95).
pub(super) struct Accuracy<'a>(pub(super) &'a [Bar], pub(super) f64);

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
            &format!(
                "Size vs specialisation: accuracy per model ({}% CI)",
                self.1
            ),
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
pub(super) struct Cost<'a>(pub(super) &'a [Bar]);

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
pub(super) struct Efficiency<'a>(pub(super) &'a [Bar]);

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
pub(super) struct Curve {
    pub(super) label: String,
    pub(super) train: Vec<(f64, f64)>,
    pub(super) validation: Vec<(f64, f64)>,
}

/// Training (solid) and validation (dashed, dots) loss per finetuned SLM.
pub(super) struct LossCurves<'a>(pub(super) &'a [Curve]);

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
