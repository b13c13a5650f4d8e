// Heatmaps on a 2D canvas for the demo page (app.js): a matrix drawn at one pixel per value and
// scaled without smoothing, a viridis colour ramp from 0 to the matrix's largest value, axis
// labels and ticks, a colour bar, and one row outlined. Plain canvas calls, no library.
//
// A matrix larger than the plot (more than 480 keys, say) is max-pooled down to the plot's
// device pixels first: each pixel shows the largest value it covers, so a peak on one key never
// vanishes between sampled columns, as it would under nearest-neighbour scaling. Canvases are
// drawn at devicePixelRatio, so the heatmaps and their text stay sharp on high-DPI screens.

/** A number to 3 significant digits, as short text. */
export const sig = (v) => (Number.isFinite(v) ? Number(v.toPrecision(3)).toString() : String(v));

// Viridis (matplotlib), 9 stops, interpolated linearly.
const VIRIDIS = [
  [68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [110, 206, 88], [253, 231, 37],
];
function viridis(t) {
  const x = Math.min(Math.max(Number.isFinite(t) ? t : 0, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - i;
  return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
}

// The ramp at 256 levels, looked up per pixel (a large map has a million values).
const LEVELS = 256;
const LUT = new Uint8ClampedArray(3 * LEVELS);
for (let k = 0; k < LEVELS; k += 1) LUT.set(viridis(k / (LEVELS - 1)), 3 * k);

const BACKGROUND = '#ffffff';
const INK = '#222222';
const FONT = '11px system-ui, sans-serif';

/** The rows × cols matrix `values` pooled by max to outRows × outCols (each at most its input
 *  size): output cell (i, j) is the largest value of the input block it covers, so every input
 *  value is in exactly one block. */
export function maxPool(values, rowsN, cols, outRows, outCols) {
  if (outRows >= rowsN && outCols >= cols) return values;
  const out = new Float32Array(outRows * outCols).fill(-Infinity);
  for (let r = 0; r < rowsN; r += 1) {
    const i = Math.floor((r * outRows) / rowsN);
    for (let c = 0; c < cols; c += 1) {
      const o = i * outCols + Math.floor((c * outCols) / cols);
      const v = values[r * cols + c];
      if (v > out[o]) out[o] = v;
    }
  }
  return out;
}

/** Draws a rows × cols matrix (values[r * cols + c]) as a heatmap with axis labels, a colour bar
 *  (0 to `top`) and `highlight` (a row index) outlined. */
export function heatmap(canvas, values, rowsN, cols, { rowLabels, colLabel, rowLabel, colTicks, highlight,
  maxWidth, maxHeight, title }) {
  const cellW = Math.max(1, Math.min(28, Math.floor(maxWidth / cols)));
  const cellH = Math.max(1, Math.min(28, Math.floor(maxHeight / rowsN)));
  const plotW = Math.min(cols * cellW, maxWidth);
  const plotH = Math.min(rowsN * cellH, maxHeight);
  const left = 56, top = 34, barGap = 14, barW = 12, right = 60, bottom = 16;
  // CSS pixels for layout, device pixels for the bitmap.
  const dpr = Math.max(1, window.devicePixelRatio || 1);
  const cssW = left + plotW + barGap + barW + right;
  const cssH = top + plotH + bottom;
  canvas.width = Math.round(cssW * dpr);
  canvas.height = Math.round(cssH * dpr);
  canvas.style.width = `${cssW}px`;
  canvas.style.height = `${cssH}px`;
  const g = canvas.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.fillStyle = BACKGROUND;
  g.fillRect(0, 0, cssW, cssH);
  let top1 = 0;
  for (const v of values) if (v > top1) top1 = v;
  const scale = top1 > 0 ? top1 : 1;
  // The matrix at one pixel per value (max-pooled to the plot's device pixels where it has
  // more), scaled onto the plot without smoothing.
  const imageRows = Math.min(rowsN, Math.round(plotH * dpr));
  const imageCols = Math.min(cols, Math.round(plotW * dpr));
  const pooled = maxPool(values, rowsN, cols, imageRows, imageCols);
  const image = new ImageData(imageCols, imageRows);
  const data = image.data;
  for (let i = 0; i < imageRows * imageCols; i += 1) {
    const t = pooled[i] / scale;
    const k = 3 * (Number.isFinite(t) ? Math.round(Math.min(Math.max(t, 0), 1) * (LEVELS - 1)) : 0);
    data[4 * i] = LUT[k];
    data[4 * i + 1] = LUT[k + 1];
    data[4 * i + 2] = LUT[k + 2];
    data[4 * i + 3] = 255;
  }
  const off = document.createElement('canvas');
  off.width = imageCols;
  off.height = imageRows;
  off.getContext('2d').putImageData(image, 0, 0);
  g.imageSmoothingEnabled = false;
  g.drawImage(off, left, top, plotW, plotH);
  // Axes and labels.
  g.fillStyle = INK;
  g.strokeStyle = INK;
  g.font = FONT;
  g.textBaseline = 'alphabetic';
  g.textAlign = 'left';
  g.fillText(title, 0, 11);
  g.textAlign = 'center';
  g.fillText(colLabel, left + plotW / 2, 24);
  const colX = (c) => left + ((c + 0.5) * plotW) / cols;
  g.textBaseline = 'bottom';
  for (const c of colTicks) g.fillText(String(c), colX(c), top - 1);
  g.save();
  g.translate(10, top + plotH / 2);
  g.rotate(-Math.PI / 2);
  g.textAlign = 'center';
  g.textBaseline = 'middle';
  g.fillText(rowLabel, 0, 0);
  g.restore();
  g.textAlign = 'right';
  g.textBaseline = 'middle';
  const rowY = (r) => top + ((r + 0.5) * plotH) / rowsN;
  const every = Math.max(1, Math.ceil(rowsN / Math.max(1, Math.floor(plotH / 14))));
  for (let r = 0; r < rowsN; r += every) g.fillText(rowLabels[r], left - 4, rowY(r));
  g.strokeRect(left - 0.5, top - 0.5, plotW + 1, plotH + 1);
  // The chosen token's row.
  if (highlight !== null) {
    const y0 = top + (highlight * plotH) / rowsN;
    const h = Math.max(plotH / rowsN, 2);
    g.lineWidth = 2;
    g.strokeStyle = '#ff2d55';
    g.strokeRect(left - 1, y0 - 1, plotW + 2, h + 2);
    // Its label in the highlight colour, over the row labels there.
    g.fillStyle = BACKGROUND;
    g.fillRect(14, y0 + h / 2 - 7, left - 16, 14);
    g.fillStyle = '#ff2d55';
    g.fillText(`${rowLabels[highlight]} ▶`, left - 3, y0 + h / 2);
    g.lineWidth = 1;
  }
  // Colour bar: 0 at the bottom, the matrix's largest value at the top.
  const bx = left + plotW + barGap;
  for (let y = 0; y < plotH; y += 1) {
    const [r, gr, b] = viridis(1 - y / Math.max(plotH - 1, 1));
    g.fillStyle = `rgb(${r},${gr},${b})`;
    g.fillRect(bx, top + y, barW, 1);
  }
  g.strokeStyle = INK;
  g.strokeRect(bx - 0.5, top - 0.5, barW + 1, plotH + 1);
  g.fillStyle = INK;
  g.textAlign = 'left';
  g.textBaseline = 'top';
  g.fillText(sig(top1), bx + barW + 4, top);
  g.textBaseline = 'bottom';
  g.fillText('0', bx + barW + 4, top + plotH);
}

/** Ticks for an axis of n: 0, the last, and a few between. */
export function ticks(n, most = 6) {
  if (n <= most) return [...Array(n).keys()];
  const out = new Set();
  for (let i = 0; i < most; i += 1) out.add(Math.round((i * (n - 1)) / (most - 1)));
  return [...out];
}
