//! Validation of large, hostile inputs: many documents repeating one name,
//! many schema errors in one file, and a megabyte-long line, each loaded and
//! rendered as `tend validate` prints it. Every case must cost time linear
//! in the size of its input.

use criterion::{criterion_group, BenchmarkId, Criterion};
use tend::model::diagnostic::render;
use tend::model::SourceFile;

// The same allocator as the tend binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `n` documents that all declare host.File/same.
fn duplicated(n: usize) -> Vec<SourceFile> {
    let doc = "---\napiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: same\nspec:\n  path: /srv/app/same.conf\n  mode: \"0644\"\n  content: \"listen 127.0.0.1:8080\\n\"\n";
    vec![SourceFile {
        path: "desired/dup.yaml".into(),
        text: doc.repeat(n),
    }]
}

/// `n` documents with one unknown field each.
fn schema_errors(n: usize) -> Vec<SourceFile> {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "---\napiVersion: tend.dev/v1\nkind: host.File\nmetadata:\n  name: f{i}\nspec:\n  path: /srv/f{i}\n  contnet: x\n"
        ));
    }
    vec![SourceFile {
        path: "desired/errors.yaml".into(),
        text,
    }]
}

/// One document whose error sits at the end of a line of `n` bytes.
fn long_line(n: usize) -> Vec<SourceFile> {
    vec![SourceFile {
        path: "desired/long.yaml".into(),
        text: format!(
            "apiVersion: tend.dev/v1\nkind: host.File\nmetadata: {{name: long}}\nspec: {{path: /srv/long, content: \"{}\", contnet: 1}}\n",
            "x".repeat(n)
        ),
    }]
}

/// Loads and renders; returns the number of diagnostics and output bytes.
fn validate(files: &[SourceFile]) -> (usize, usize) {
    match tend::load(files) {
        Ok(_) => (0, 0),
        Err(invalid) => (
            invalid.diagnostics.len(),
            render(&invalid.diagnostics, &invalid.sources, false).len(),
        ),
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("validate_hostile");
    group.sample_size(10);
    let cases: [(&str, usize, Vec<SourceFile>); 4] = [
        ("duplicates", 400, duplicated(400)),
        ("duplicates", 1_000, duplicated(1_000)),
        ("schema_errors", 10_000, schema_errors(10_000)),
        ("long_line", 1 << 20, long_line(1 << 20)),
    ];
    for (name, n, files) in &cases {
        let (diags, bytes) = validate(files);
        println!("{name}/{n}: {diags} diagnostics, {bytes} bytes printed");
        group.bench_with_input(BenchmarkId::new(*name, n), files, |b, files| {
            b.iter(|| validate(files))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
