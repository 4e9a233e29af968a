//! Merge registry settings into /etc/docker/daemon.json without clobbering the user's keys,
//! and take exactly cloudflow's additions out again on `down`. Pure.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct Merged {
    /// New file content (pretty JSON, trailing newline).
    pub content: String,
    pub added_insecure: Vec<String>,
    pub added_mirrors: Vec<String>,
    pub created_file: bool,
}

fn parse(current: Option<&str>) -> Result<Map<String, Value>, String> {
    match current.map(str::trim) {
        None | Some("") => Ok(Map::new()),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("is not a JSON object".into()),
            Err(e) => Err(format!("is not valid JSON ({e})")),
        },
    }
}

fn add_all(
    map: &mut Map<String, Value>,
    key: &str,
    wanted: &[String],
) -> Result<Vec<String>, String> {
    let entry = map
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(vec![]));
    let Value::Array(list) = entry else {
        return Err(format!("has `{key}` that is not a list"));
    };
    let mut added = Vec::new();
    for w in wanted {
        if !list.iter().any(|v| v.as_str() == Some(w)) {
            list.push(Value::String(w.clone()));
            added.push(w.clone());
        }
    }
    if list.is_empty() {
        map.remove(key);
    }
    Ok(added)
}

fn render(map: &Map<String, Value>) -> String {
    let mut s = serde_json::to_string_pretty(map).expect("a JSON map always serialises");
    s.push('\n');
    s
}

/// `None` when nothing needs to change.
pub fn merge(
    current: Option<&str>,
    insecure: &[String],
    mirrors: &[String],
) -> Result<Option<Merged>, String> {
    let mut map = parse(current)?;
    let added_insecure = add_all(&mut map, "insecure-registries", insecure)?;
    let added_mirrors = add_all(&mut map, "registry-mirrors", mirrors)?;
    if added_insecure.is_empty() && added_mirrors.is_empty() {
        return Ok(None);
    }
    Ok(Some(Merged {
        content: render(&map),
        added_insecure,
        added_mirrors,
        created_file: current.is_none(),
    }))
}

/// What the file should become once cloudflow's additions are taken out:
/// `Some(Some(content))` rewrite, `Some(None)` delete (cloudflow created it and it is empty
/// now), `None` leave as is.
pub fn unmerge(
    current: Option<&str>,
    added_insecure: &[String],
    added_mirrors: &[String],
    created_file: bool,
) -> Result<Option<Option<String>>, String> {
    let Some(text) = current else { return Ok(None) };
    let mut map = parse(Some(text))?;
    let mut changed = false;
    for (key, added) in [
        ("insecure-registries", added_insecure),
        ("registry-mirrors", added_mirrors),
    ] {
        if let Some(Value::Array(list)) = map.get_mut(key) {
            let before = list.len();
            list.retain(|v| !v.as_str().is_some_and(|s| added.iter().any(|a| a == s)));
            changed |= list.len() != before;
            if list.is_empty() {
                map.remove(key);
            }
        }
    }
    if created_file && map.is_empty() {
        return Ok(Some(None));
    }
    Ok(changed.then(|| Some(render(&map))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn merge_into_missing_file_creates_it() {
        let m = merge(None, &s(&["10.0.0.2:5000"]), &s(&["http://10.0.0.2:5000"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            m.content,
            "{\n  \"insecure-registries\": [\n    \"10.0.0.2:5000\"\n  ],\n  \"registry-mirrors\": [\n    \"http://10.0.0.2:5000\"\n  ]\n}\n"
        );
        assert!(m.created_file);
        assert_eq!(m.added_insecure, ["10.0.0.2:5000"]);
    }

    #[test]
    fn merge_keeps_user_keys_and_entries_and_is_idempotent() {
        let cur = r#"{"log-driver": "journald", "insecure-registries": ["mine:5000"]}"#;
        let m = merge(Some(cur), &s(&["mine:5000", "reg:5000"]), &[])
            .unwrap()
            .unwrap();
        assert_eq!(m.added_insecure, ["reg:5000"]);
        assert!(!m.created_file);
        let v: Value = serde_json::from_str(&m.content).unwrap();
        assert_eq!(v["log-driver"], "journald");
        assert_eq!(
            v["insecure-registries"],
            serde_json::json!(["mine:5000", "reg:5000"])
        );
        assert_eq!(
            merge(Some(&m.content), &s(&["mine:5000", "reg:5000"]), &[]).unwrap(),
            None
        );
        assert_eq!(merge(None, &[], &[]).unwrap(), None);
    }

    #[test]
    fn merge_refuses_to_clobber_a_broken_file() {
        assert!(
            merge(Some("{not json"), &s(&["r"]), &[])
                .unwrap_err()
                .contains("not valid JSON")
        );
        assert!(
            merge(Some(r#"{"insecure-registries": "x"}"#), &s(&["r"]), &[])
                .unwrap_err()
                .contains("not a list")
        );
    }

    #[test]
    fn unmerge_takes_out_only_what_cloudflow_added() {
        let cur = r#"{"log-driver": "journald", "insecure-registries": ["mine:5000", "reg:5000"]}"#;
        let out = unmerge(Some(cur), &s(&["reg:5000"]), &[], false)
            .unwrap()
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"log-driver": "journald", "insecure-registries": ["mine:5000"]})
        );
        // A file cloudflow created and that holds nothing else is removed.
        let created = merge(None, &s(&["reg:5000"]), &[]).unwrap().unwrap();
        assert_eq!(
            unmerge(Some(&created.content), &s(&["reg:5000"]), &[], true).unwrap(),
            Some(None)
        );
        // Nothing of ours left: leave the file alone.
        assert_eq!(
            unmerge(Some(r#"{"a": 1}"#), &s(&["reg:5000"]), &[], false).unwrap(),
            None
        );
        assert_eq!(unmerge(None, &s(&["reg:5000"]), &[], true).unwrap(), None);
    }
}
