//! Self-contained HTML reports (images referenced by relative path next to the report).

use anyhow::Result;
use std::path::Path;

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An image with its caption.
pub fn figure(src: &Path, caption: &str) -> String {
    format!(
        "<figure><img src=\"{}\"><figcaption>{}</figcaption></figure>",
        html_escape(&src.display().to_string()),
        html_escape(caption)
    )
}

/// Writes `body` into a page titled `title`, atomically.
pub fn write_report(path: &Path, title: &str, body: &str) -> Result<()> {
    let page = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>\
body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}\
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}\
td:first-child,th:first-child{{text-align:left}}img{{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}}\
figure{{display:inline-block;margin:0 1em 1em 0;vertical-align:top}}figcaption{{font-size:90%;color:#555}}\
pre{{background:#f4f4f4;padding:8px}}</style></head><body><h1>{t}</h1>\n{body}\n<p style=\"color:#888\">rectok \
    {v}</p></body></html>\n",
        t = html_escape(title),
        v = env!("CARGO_PKG_VERSION"),
    );
    crate::io::write_atomic(path, page.as_bytes())
}
