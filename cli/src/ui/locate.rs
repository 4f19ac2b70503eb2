//! Finds the line of a field path (`spec.components[0].traits[1].properties.instances`) in
//! YAML text, so a validation error that names a field (and no line) is shown at its line.
//!
//! It reads block-style YAML the way manifests are written (keys at an indentation, sequence
//! items as `- `); for anything it cannot follow it answers the deepest line it found, or none.

#[derive(Debug, PartialEq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(close) = inner.find(']') else { break };
            if let Ok(n) = inner[..close].parse() {
                out.push(Segment::Index(n));
            }
            rest = &inner[close + 1..];
        }
    }
    out
}

/// Leading spaces, then `- ` sequence markers counted as indentation.
fn effective_indent(line: &str) -> (usize, &str) {
    let mut indent = line.len() - line.trim_start_matches(' ').len();
    let mut rest = &line[indent..];
    while let Some(after) = rest.strip_prefix("- ") {
        let spaces = after.len() - after.trim_start_matches(' ').len();
        indent += 2 + spaces;
        rest = &after[spaces..];
    }
    (indent, rest)
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#') && t != "---"
}

/// The 1-based line `path` points at in `text`, when it can be found.
pub fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let (mut start, mut end) = (0usize, lines.len());
    let mut found: Option<usize> = None;
    for segment in segments(path) {
        let first = (start..end).find(|&i| is_content(lines[i]))?;
        match segment {
            Segment::Key(key) => {
                let (indent, _) = effective_indent(lines[first]);
                let hit = (start..end).find(|&i| {
                    let (ind, rest) = effective_indent(lines[i]);
                    ind == indent
                        && is_content(lines[i])
                        && (rest.starts_with(&format!("{key}:"))
                            || rest.starts_with(&format!("\"{key}\":"))
                            || rest.starts_with(&format!("'{key}':")))
                });
                let Some(i) = hit else {
                    return found.map(|l| l + 1);
                };
                found = Some(i);
                let block_end = (i + 1..end)
                    .find(|&j| is_content(lines[j]) && effective_indent(lines[j]).0 <= indent)
                    .unwrap_or(end);
                start = i + 1;
                end = block_end;
                // `key: value` on one line: nothing deeper to look into.
                if start >= end {
                    return Some(i + 1);
                }
            }
            Segment::Index(n) => {
                let raw = |i: usize| lines[i].len() - lines[i].trim_start_matches(' ').len();
                let items: Vec<usize> = (start..end)
                    .filter(|&i| lines[i].trim_start().starts_with('-') && is_content(lines[i]))
                    .collect();
                let Some(dash) = items.iter().map(|&i| raw(i)).min() else {
                    return found.map(|l| l + 1);
                };
                let items: Vec<usize> = items.into_iter().filter(|&i| raw(i) == dash).collect();
                let Some(&i) = items.get(n) else {
                    return found.map(|l| l + 1);
                };
                found = Some(i);
                let next = items.get(n + 1).copied().unwrap_or(end);
                start = i;
                end = next;
                // The item's first key sits on the dash line itself: search from there with
                // the dash counted as indentation.
            }
        }
    }
    found.map(|l| l + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: demo
spec:
  components:
    - name: hello
      type: component
      properties:
        image: file:///x.wasm
      traits:
        - type: spreadscaler
          properties:
            instances: 1
    - name: web
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.0
      traits:
        - type: link
          properties:
            target:
              name: hello
        - type: link
          properties:
            namespace: wasi
";

    #[test]
    fn paths_split_into_keys_and_indexes() {
        assert_eq!(
            segments("spec.components[1].traits"),
            vec![
                Segment::Key("spec"),
                Segment::Key("components"),
                Segment::Index(1),
                Segment::Key("traits")
            ]
        );
    }

    #[test]
    fn finds_fields_in_nested_sequences() {
        assert_eq!(line_of(MANIFEST, "metadata.name"), Some(4));
        assert_eq!(line_of(MANIFEST, "spec.components[0]"), Some(7));
        assert_eq!(line_of(MANIFEST, "spec.components[0].name"), Some(7));
        assert_eq!(
            line_of(
                MANIFEST,
                "spec.components[0].traits[0].properties.instances"
            ),
            Some(14)
        );
        assert_eq!(
            line_of(MANIFEST, "spec.components[1].properties.image"),
            Some(18)
        );
        assert_eq!(
            line_of(
                MANIFEST,
                "spec.components[1].traits[1].properties.namespace"
            ),
            Some(26)
        );
        assert_eq!(
            line_of(
                MANIFEST,
                "spec.components[1].traits[0].properties.target.name"
            ),
            Some(23)
        );
    }

    #[test]
    fn unknown_fields_point_at_the_deepest_known_parent() {
        assert_eq!(line_of(MANIFEST, "spec.components[0].nope"), Some(7));
        assert_eq!(line_of(MANIFEST, "spec.components[9]"), Some(6));
        assert_eq!(line_of("", "spec"), None);
    }
}
