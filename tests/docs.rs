//! The reference pages are the user's reference: docs/configuration.md documents exactly the
//! variables the code honours (`config::VARIABLES`, both ways), and every metric in docs/signals.md. And the
//! documentation must hold together: every relative link in README.md, SECURITY.md,
//! ARCHITECTURE.md and docs/*.md leads to a file that exists and, with a `#anchor`, to a
//! heading of that file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use lambda_sidecar::config::{Domain, VARIABLES};
use lambda_sidecar::metrics::METRICS;

const CONFIGURATION: &str = include_str!("../docs/configuration.md");
const SIGNALS: &str = include_str!("../docs/signals.md");

/// The names docs/configuration.md writes as variables: a backticked word with a prefix the
/// sidecar reads (`SIDECAR_`, `JWT_`, `OTEL_`, `AWS_`), in capitals.
fn documented_variables() -> HashSet<&'static str> {
    CONFIGURATION
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| {
            ["SIDECAR_", "JWT_", "OTEL_", "AWS_"]
                .iter()
                .any(|prefix| word.starts_with(prefix))
                && word
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        })
        .collect()
}

/// Both ways: every variable of `config::VARIABLES` a user may set is documented, and every
/// variable the reference documents is one the sidecar honours (a typo or a removed
/// variable in the docs fails here). What Lambda itself sets (the `Lambda` domain) is
/// documented where it matters, not required.
#[test]
fn the_configuration_reference_documents_exactly_the_variables() {
    let documented = documented_variables();
    let missing: Vec<&str> = VARIABLES
        .iter()
        .filter(|v| v.domain != Domain::Lambda)
        .map(|v| v.name)
        .filter(|name| !documented.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "not documented in docs/configuration.md: {missing:?}"
    );
    let mut unknown: Vec<&str> = documented
        .into_iter()
        .filter(|name| !VARIABLES.iter().any(|v| v.name == *name))
        .collect();
    unknown.sort();
    assert!(
        unknown.is_empty(),
        "documented in docs/configuration.md but not honoured (config::VARIABLES): {unknown:?}"
    );
}

#[test]
fn every_metric_is_in_the_signals_reference() {
    let missing: Vec<&str> = METRICS
        .iter()
        .map(|m| m.name)
        .filter(|name| !SIGNALS.contains(&format!("`{name}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not documented in docs/signals.md: {missing:?}"
    );
}

#[test]
fn every_relative_link_leads_to_a_file_and_heading() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages: Vec<PathBuf> = ["README.md", "SECURITY.md", "ARCHITECTURE.md"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    let mut docs: Vec<PathBuf> = fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "no docs/*.md found");
    pages.extend(docs);

    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = fs::read_to_string(page).unwrap();
        let shown = page.strip_prefix(root).unwrap().display();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(path)
            };
            if !file.exists() {
                broken.push(format!("{shown}: {target}: no such file"));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            let has_heading = file.is_file()
                && file.extension().is_some_and(|ext| ext == "md")
                && headings(&fs::read_to_string(&file).unwrap()).contains(anchor);
            if !has_heading {
                broken.push(format!("{shown}: {target}: no such heading"));
            }
        }
    }
    assert!(
        checked > 0,
        "no relative link found: the link parser is broken"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets of the inline links `[text](target)` of a markdown page, outside code: fenced
/// blocks are skipped, and inline code spans are removed before a line is read.
fn links(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in prose_lines(markdown) {
        let line = without_code_spans(line);
        let mut rest = line.as_str();
        while let Some(start) = rest.find("](") {
            let after = &rest[start + 2..];
            let Some(end) = after.find(')') else { break };
            // `[text](target "title")`: the target is the first word.
            let target = after[..end].split_whitespace().next().unwrap_or("");
            found.push(target.to_string());
            rest = &after[end..];
        }
    }
    found
}

/// The anchors GitHub gives a page's headings: lowercase, spaces to `-`, every other
/// character but letters, digits, `-` and `_` dropped; a repeated heading gets `-1`, `-2`...
fn headings(markdown: &str) -> HashSet<String> {
    let mut anchors = HashSet::new();
    for line in prose_lines(markdown) {
        let Some(title) = line.strip_prefix('#') else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                '-' | '_' => Some(c),
                c if c.is_alphanumeric() => Some(c),
                _ => None,
            })
            .flat_map(char::to_lowercase)
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while !anchors.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
    }
    anchors
}

/// The lines of a markdown page outside fenced code blocks.
fn prose_lines(markdown: &str) -> impl Iterator<Item = &str> {
    let mut in_fence = false;
    markdown.lines().filter(move |line| {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            return false;
        }
        !in_fence
    })
}

/// A line with its inline code spans (`` `…` ``) removed.
fn without_code_spans(line: &str) -> String {
    line.split('`').step_by(2).collect()
}

#[test]
fn the_heading_anchors_follow_github() {
    let page = "# Deploying: the Lambda layer, the SAM template\n\
                ### 3. Deploy\n\
                ## `make bench`\n\
                ## Flush behaviour: never hold the function\n\
                ## Key sources\n\
                ## Key sources\n\
                ```sh\n\
                # a comment, not a heading\n\
                ```\n";
    let anchors = headings(page);
    for anchor in [
        "deploying-the-lambda-layer-the-sam-template",
        "3-deploy",
        "make-bench",
        "flush-behaviour-never-hold-the-function",
        "key-sources",
        "key-sources-1",
    ] {
        assert!(
            anchors.contains(anchor),
            "{anchor} missing from {anchors:?}"
        );
    }
    assert_eq!(anchors.len(), 6, "{anchors:?}");
    assert_eq!(
        links("[a](b.md#c) `[no](code.md)` [d](https://e) [f](g.md \"title\")"),
        ["b.md#c", "https://e", "g.md"]
    );
}
