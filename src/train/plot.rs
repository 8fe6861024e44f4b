//! Loss curves as a PNG: train loss (line) and eval loss (line + markers) against optimizer step.
//!
//! Text is drawn with a font compiled into the binary (a subset of DejaVu Sans, see
//! `assets/fonts/README.md`), so plotting works on machines with no system fonts at all.
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, ensure};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// The embedded font (DejaVu Sans 2.37, Latin/Greek subset; Bitstream Vera + Arev licenses).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");

/// Size of the written image in pixels.
pub const PLOT_WIDTH: u32 = 900;
pub const PLOT_HEIGHT: u32 = 500;

const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
const EVAL_COLOR: RGBColor = RGBColor(214, 39, 40);

/// Registers the embedded font under the generic family names plotters asks for, once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        ["sans-serif", "serif", "monospace"].iter().all(|family| register_font(family, FontStyle::Normal, FONT).is_ok())
    });
    ensure!(ok, "the embedded plot font could not be loaded");
    Ok(())
}

/// Points with a finite loss; NaN or infinite losses (a diverged step) are left out of the plot.
fn finite(points: &[(u64, f64)]) -> Vec<(u64, f64)> {
    points.iter().copied().filter(|(_, loss)| loss.is_finite()).collect()
}

/// Number of decimals that tells apart tick labels over a y range of width `span`.
fn y_decimals(span: f64) -> usize {
    if span > 0.0 { (2.0 - span.log10().floor()).clamp(0.0, 6.0) as usize } else { 3 }
}

/// Writes a PNG (`PLOT_WIDTH` x `PLOT_HEIGHT`) of the train loss and, when `eval` is not empty, the
/// eval loss against optimizer step, with `title`, axis labels and a legend. The file is written
/// atomically (temporary file in the same folder, then rename). Points with a non-finite loss are
/// skipped; `train` must hold at least one finite point.
pub fn plot_losses(path: &Path, title: &str, train: &[(u64, f64)], eval: &[(u64, f64)]) -> Result<()> {
    ensure!(!train.is_empty(), "cannot plot {}: no train losses", path.display());
    let train = finite(train);
    ensure!(!train.is_empty(), "cannot plot {}: every train loss is NaN or infinite", path.display());
    let eval = finite(eval);
    ensure_font()?;

    let all = || train.iter().chain(eval.iter());
    let x_min = all().map(|p| p.0).min().unwrap_or(0);
    let mut x_max = all().map(|p| p.0).max().unwrap_or(0);
    if x_max == x_min {
        x_max = x_min + 1;
    }
    let y_lo = all().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let y_hi = all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = if y_hi > y_lo { 0.05 * (y_hi - y_lo) } else { 0.5f64.max(0.05 * y_hi.abs()) };
    let (y_min, y_max) = (y_lo - pad, y_hi + pad);
    let decimals = y_decimals(y_max - y_min);

    let mut rgb = vec![0u8; (PLOT_WIDTH * PLOT_HEIGHT * 3) as usize];
    {
        let err = |e: &dyn std::fmt::Display| anyhow!("cannot draw plot {}: {e}", path.display());
        let root = BitMapBackend::with_buffer(&mut rgb, (PLOT_WIDTH, PLOT_HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(46)
            .y_label_area_size(70)
            .build_cartesian_2d(x_min..x_max, y_min..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss (NLL per y token)")
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 13))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(205, 205, 205))
            .y_label_formatter(&|y| format!("{y:.decimals$}"))
            .draw()
            .map_err(|e| err(&e))?;

        // A long, noisy train curve reads better with a thin line.
        let train_style = TRAIN_COLOR.stroke_width(if train.len() > 100 { 1 } else { 2 });
        chart
            .draw_series(LineSeries::new(train.iter().copied(), train_style))
            .map_err(|e| err(&e))?
            .label("train")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], train_style));
        if train.len() == 1 {
            // A line through one point draws nothing: mark it.
            chart.draw_series(train.iter().map(|&p| Circle::new(p, 3, TRAIN_COLOR.filled()))).map_err(|e| err(&e))?;
        }
        if !eval.is_empty() {
            let eval_style = EVAL_COLOR.stroke_width(2);
            chart.draw_series(LineSeries::new(eval.iter().copied(), eval_style)).map_err(|e| err(&e))?;
            chart
                .draw_series(eval.iter().map(|&p| Circle::new(p, 4, EVAL_COLOR.filled())))
                .map_err(|e| err(&e))?
                .label("eval")
                .legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new(vec![(0, 0), (20, 0)], eval_style)
                        + Circle::new((10, 0), 4, EVAL_COLOR.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.5))
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }

    let png = encode_png(&rgb, PLOT_WIDTH, PLOT_HEIGHT).with_context(|| format!("cannot encode {}", path.display()))?;
    crate::output::write_atomic(path, &png)
}

/// Encodes 8-bit RGB pixels as a PNG file's bytes.
fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Points = Vec<(u64, f64)>;

    fn curves() -> (Points, Points) {
        let train = (0..200u64).map(|s| (s, 3.0 * (-(s as f64) / 60.0).exp() + 0.8 + 0.1 * (s as f64).sin())).collect();
        let eval = (0..=4u64).map(|i| (i * 50, 3.0 * (-(i as f64 * 50.0) / 60.0).exp() + 0.95)).collect();
        (train, eval)
    }

    /// An 8-bit RGB image decoded from a PNG file: (width, height, pixels).
    struct Rgb {
        width: u32,
        height: u32,
        pixels: Vec<[u8; 3]>,
    }

    impl Rgb {
        fn dimensions(&self) -> (u32, u32) {
            (self.width, self.height)
        }
    }

    fn decode(path: &Path) -> Rgb {
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Rgb, png::BitDepth::Eight));
        let pixels = buf[..info.buffer_size()].chunks_exact(3).map(|p| [p[0], p[1], p[2]]).collect();
        Rgb { width: info.width, height: info.height, pixels }
    }

    fn count(img: &Rgb, pred: impl Fn(&[u8; 3]) -> bool) -> usize {
        img.pixels.iter().filter(|p| pred(p)).count()
    }

    #[test]
    fn writes_a_png_of_the_right_size_with_both_curves_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let (train, eval) = curves();
        plot_losses(&path, "run test — loss", &train, &eval).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let img = decode(&path);
        assert_eq!(img.dimensions(), (PLOT_WIDTH, PLOT_HEIGHT));
        assert!(count(&img, |p| *p != [255, 255, 255]) > 5_000, "plot is (almost) blank");
        let near = |c: RGBColor| move |p: &[u8; 3]| p.iter().zip([c.0, c.1, c.2]).all(|(a, b)| a.abs_diff(b) < 8);
        assert!(count(&img, near(TRAIN_COLOR)) > 200, "train curve missing");
        assert!(count(&img, near(EVAL_COLOR)) > 100, "eval curve missing");
        // Text (title, tick labels, axis labels, legend) is drawn in black/dark grey.
        assert!(count(&img, |p| p.iter().all(|&v| v < 80)) > 1_000, "no text drawn");
        // Only the finished file is left behind: no temporary file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn eval_may_be_empty_and_single_points_and_non_finite_losses_are_fine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train_only.png");
        let (train, _) = curves();
        plot_losses(&path, "train only", &train, &[]).unwrap();
        let img = decode(&path);
        assert_eq!(img.dimensions(), (PLOT_WIDTH, PLOT_HEIGHT));
        assert!(count(&img, |p| *p != [255, 255, 255]) > 5_000);

        let path = dir.path().join("single.png");
        plot_losses(&path, "one step", &[(7, 2.5), (8, f64::NAN)], &[(7, f64::INFINITY)]).unwrap();
        assert_eq!(decode(&path).dimensions(), (PLOT_WIDTH, PLOT_HEIGHT));

        // Overwrites an existing plot in place.
        plot_losses(&path, "again", &train, &[]).unwrap();
        assert_eq!(decode(&path).dimensions(), (PLOT_WIDTH, PLOT_HEIGHT));
    }

    #[test]
    fn empty_or_all_non_finite_train_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let err = plot_losses(&path, "t", &[], &[(1, 1.0)]).unwrap_err();
        assert!(err.to_string().contains("no train losses"), "{err}");
        let err = plot_losses(&path, "t", &[(1, f64::NAN)], &[]).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn y_tick_decimals_follow_the_range() {
        assert_eq!(y_decimals(10.0), 1);
        assert_eq!(y_decimals(2.0), 2);
        assert_eq!(y_decimals(0.05), 4);
        assert_eq!(y_decimals(0.0), 3);
        assert_eq!(y_decimals(1e-12), 6);
        assert_eq!(y_decimals(5000.0), 0);
    }
}
