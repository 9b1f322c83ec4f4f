//! A step's fault table → the API's `FaultSpec`, read against the API's own descriptors.
//!
//! The table names an action (`action = "drop"`, the name of a field of `Action`'s oneof,
//! `-` or `_`) and fields of `Target`, of that action's message and of `FaultSpec` by their
//! proto names (`port`, `direction`, `probability`, `label`). Nothing here lists actions or
//! fields: what the protos gain (a target field, an action) is a scenario key at once, in
//! this crate and in every client that reads the same descriptors. Values take the field's
//! type: enums by their short names (`to-port`, `reset`), as faultctl prints them; integer
//! fields whose names end in `_ms`/`_us` also take a duration (`"200ms"`), and may then be
//! named without that suffix (`latency = "200ms"` for `latency_us`); `*bits_per_second`
//! takes a rate (`"1mbit"`). Ranges and what combines with what are the daemon's to judge,
//! as for every client: they are checked once, in its domain model.

use std::ops::Range;
use std::sync::OnceLock;

use prost_reflect::{
    DescriptorPool, DynamicMessage, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    ReflectMessage as _, Value,
};
use toml::Spanned;

use crate::proto;
use crate::units::{parse_duration, parse_ports, parse_rate};

/// A fault as written: keys and values with where they are in the file.
pub type FaultTable = std::collections::BTreeMap<Spanned<String>, Spanned<toml::Value>>;

/// What is wrong, and where (a byte range of the file).
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub span: Range<usize>,
    pub message: String,
}

fn at(span: Range<usize>, message: impl Into<String>) -> Located {
    Located {
        span,
        message: message.into(),
    }
}

struct Schema {
    spec: MessageDescriptor,
    target: MessageDescriptor,
    action: MessageDescriptor,
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        // Built into this crate from the same protos as the generated code.
        let pool = DescriptorPool::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("the crate's own descriptor set decodes");
        let message = |name: &str| {
            pool.get_message_by_name(name)
                .unwrap_or_else(|| panic!("{name} is in faultd.proto"))
        };
        Schema {
            spec: message("faultd.v1.FaultSpec"),
            target: message("faultd.v1.Target"),
            action: message("faultd.v1.Action"),
        }
    })
}

/// The actions the API knows, as scenario files name them (`limit-bytes`).
pub fn action_names() -> Vec<String> {
    schema().action.fields().map(|f| dashed(f.name())).collect()
}

fn dashed(name: &str) -> String {
    name.replace('_', "-")
}

/// The fault of `table` as the API takes it, and a one-line description of it
/// (`drop port=2380 peer=127.0.0.3`). `table_span` is where the table is, for what is
/// missing from it; `label` is the label unless the table gives one.
pub fn to_spec(
    table: &FaultTable,
    table_span: Range<usize>,
    label: &str,
) -> Result<(proto::FaultSpec, String), Located> {
    let schema = schema();
    let (action_key, action_value) = table
        .iter()
        .find(|(k, _)| k.get_ref() == "action")
        .ok_or_else(|| {
            at(
                table_span,
                format!(
                    "missing field `action` (one of {})",
                    action_names().join(", ")
                ),
            )
        })?;
    let action_field = action_field(action_value)?;
    let Kind::Message(action_desc) = action_field.kind() else {
        unreachable!("Action's oneof holds messages");
    };
    let mut target = DynamicMessage::new(schema.target.clone());
    let mut action = DynamicMessage::new(action_desc.clone());
    let mut spec = DynamicMessage::new(schema.spec.clone());
    // In the file's order, for the description and for which error comes first.
    let mut entries: Vec<_> = table.iter().filter(|(k, _)| *k != action_key).collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let mut words = vec![dashed(action_field.name())];
    for (key, value) in entries {
        let name = key.get_ref().replace('-', "_");
        if let ("port", toml::Value::String(text)) = (name.as_str(), value.get_ref()) {
            port_range(&mut target, text, value.span())?;
            words.push(format!("port={text}"));
            continue;
        }
        let (message, field) = [&mut target, &mut action, &mut spec]
            .into_iter()
            .find_map(|m| {
                let field = resolve(&m.descriptor(), &name)?;
                Some((m, field))
            })
            .ok_or_else(|| {
                at(
                    key.span(),
                    format!(
                        "unknown field `{}` for {} (fields: {})",
                        key.get_ref(),
                        dashed(action_field.name()),
                        known_keys(&action_desc).join(", ")
                    ),
                )
            })?;
        if message.has_field(&field) {
            return Err(at(
                key.span(),
                format!("`{}` is given twice", key.get_ref()),
            ));
        }
        message.set_field(&field, convert(&field, value)?);
        words.push(format!("{}={}", key.get_ref(), shown(value.get_ref())));
    }
    if !spec.has_field_by_name("label") {
        spec.set_field_by_name("label", Value::String(label.to_string()));
    }
    let mut oneof = DynamicMessage::new(schema.action.clone());
    oneof.set_field(&action_field, Value::Message(action));
    spec.set_field_by_name("target", Value::Message(target));
    spec.set_field_by_name("action", Value::Message(oneof));
    let spec = spec
        .transcode_to::<proto::FaultSpec>()
        .expect("a message built from the descriptor of FaultSpec decodes as one");
    Ok((spec, words.join(" ")))
}

/// `port = "2379-2381"` (or `"2379"`): a port range written as faultctl's `--port` and the
/// config file take it, read by the same parser, into the target's `port` and `port_end`.
fn port_range(target: &mut DynamicMessage, text: &str, span: Range<usize>) -> Result<(), Located> {
    let ports = parse_ports(text).map_err(|e| at(span.clone(), format!("port: {e}")))?;
    if target.has_field_by_name("port_end") && ports.last.is_some() {
        return Err(at(
            span,
            "port: a range, and `port-end` is given too".to_string(),
        ));
    }
    target.set_field_by_name("port", Value::U32(u32::from(ports.first)));
    if let Some(last) = ports.last {
        target.set_field_by_name("port_end", Value::U32(u32::from(last)));
    }
    Ok(())
}

/// The field of `Action`'s oneof that `value` names.
fn action_field(value: &Spanned<toml::Value>) -> Result<FieldDescriptor, Located> {
    let unknown = |what: String| {
        at(
            value.span(),
            format!(
                "action: {what} is not an action (one of {})",
                action_names().join(", ")
            ),
        )
    };
    let Some(name) = value.get_ref().as_str() else {
        return Err(unknown(shown(value.get_ref())));
    };
    schema()
        .action
        .get_field_by_name(&name.replace('-', "_"))
        .ok_or_else(|| unknown(format!("{name:?}")))
}

/// Keys a fault of this action may have, for the error naming an unknown one.
fn known_keys(action: &MessageDescriptor) -> Vec<String> {
    let schema = schema();
    let spec_scalars = schema
        .spec
        .fields()
        .filter(|f| !matches!(f.kind(), Kind::Message(_)));
    schema
        .target
        .fields()
        .chain(action.fields())
        .chain(spec_scalars)
        .map(|f| dashed(&short_name(f.name())))
        .collect()
}

/// A field's name without a unit suffix that scenario files may leave out.
fn short_name(name: &str) -> String {
    ["_ms", "_us"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
        .to_string()
}

/// The field `name` stands for in `message`: its own, or a `_ms`/`_us` one named without its
/// unit. `FaultSpec`'s target and action are not keys: they are the table itself.
fn resolve(message: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    let field = message.get_field_by_name(name).or_else(|| {
        ["_ms", "_us"]
            .iter()
            .find_map(|suffix| message.get_field_by_name(&format!("{name}{suffix}")))
    })?;
    let is_spec = message.full_name() == schema().spec.full_name();
    (!(is_spec && matches!(field.kind(), Kind::Message(_)))).then_some(field)
}

fn convert(field: &FieldDescriptor, value: &Spanned<toml::Value>) -> Result<Value, Located> {
    if field.is_list() {
        let toml::Value::Array(items) = value.get_ref() else {
            return Err(at(
                value.span(),
                format!("{}: expected a list", field.name()),
            ));
        };
        return items
            .iter()
            .map(|item| scalar(field, item, value.span()))
            .collect::<Result<_, _>>()
            .map(Value::List);
    }
    scalar(field, value.get_ref(), value.span())
}

/// One value of `field`'s type; errors name the field as the API does.
fn scalar(
    field: &FieldDescriptor,
    value: &toml::Value,
    span: Range<usize>,
) -> Result<Value, Located> {
    let name = field.name();
    let wrong = |expected: &str| {
        at(
            span.clone(),
            format!("{name}: expected {expected}, found {}", shown(value)),
        )
    };
    match field.kind() {
        Kind::Double | Kind::Float => {
            let number = match value {
                toml::Value::Float(f) => *f,
                toml::Value::Integer(i) => *i as f64,
                _ => return Err(wrong("a number")),
            };
            Ok(match field.kind() {
                Kind::Float => Value::F32(number as f32),
                _ => Value::F64(number),
            })
        }
        Kind::Bool => value
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| wrong("true or false")),
        Kind::String => value
            .as_str()
            .map(|s| Value::String(s.to_string()))
            .ok_or_else(|| wrong("a string")),
        Kind::Enum(names) => enum_value(&names, value)
            .ok_or_else(|| wrong(&format!("one of {}", enum_names(&names).join(", ")))),
        Kind::Message(message) => {
            let Some(table) = value.as_table() else {
                return Err(wrong("a table"));
            };
            let mut nested = DynamicMessage::new(message.clone());
            for (key, item) in table {
                let Some(inner) = resolve(&message, &key.replace('-', "_")) else {
                    return Err(at(span.clone(), format!("{name}: unknown field `{key}`")));
                };
                let spanned = Spanned::new(span.clone(), item.clone());
                nested.set_field(&inner, convert(&inner, &spanned)?);
            }
            Ok(Value::Message(nested))
        }
        kind => {
            integer(field, &kind, value).map_err(|message| at(span, format!("{name}: {message}")))
        }
    }
}

/// An integer field, from an integer, or a duration or rate where its name says so. The
/// error is the whole message after the field's name.
fn integer(field: &FieldDescriptor, kind: &Kind, value: &toml::Value) -> Result<Value, String> {
    let name = field.name();
    let timed = name.ends_with("_ms") || name.ends_with("_us");
    let number: i128 = match value {
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::String(text) if timed => {
            let d = parse_duration(text)?;
            match name.ends_with("_ms") {
                true => d.as_millis() as i128,
                false => d.as_micros() as i128,
            }
        }
        toml::Value::String(text) if name.ends_with("bits_per_second") => parse_rate(text)?.into(),
        _ => {
            let expected = match timed {
                true => "a duration like \"500ms\" or an integer",
                false => "an integer",
            };
            return Err(format!("expected {expected}, found {}", shown(value)));
        }
    };
    let type_name = format!("{kind:?}").to_ascii_lowercase();
    let out_of_range = || format!("expected an integer that fits {type_name}, found {number}");
    Ok(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(number.try_into().map_err(|_| out_of_range())?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(number.try_into().map_err(|_| out_of_range())?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(number.try_into().map_err(|_| out_of_range())?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(number.try_into().map_err(|_| out_of_range())?),
        _ => {
            return Err(format!(
                "a field of type {type_name}, which scenarios cannot write"
            ));
        }
    })
}

/// An enum's values by the names faultctl prints (`to-port` for `DIRECTION_TO_PORT`);
/// never the unspecified one.
fn enum_names(e: &EnumDescriptor) -> Vec<String> {
    e.values()
        .filter(|v| v.number() != 0)
        .map(|v| enum_short_name(e, v.name()))
        .collect()
}

fn enum_short_name(e: &EnumDescriptor, value: &str) -> String {
    let prefix = format!("{}_", upper_snake(e.name()));
    value
        .strip_prefix(&prefix)
        .unwrap_or(value)
        .to_ascii_lowercase()
        .replace('_', "-")
}

fn enum_value(e: &EnumDescriptor, value: &toml::Value) -> Option<Value> {
    let wanted = value.as_str()?.replace('_', "-").to_ascii_lowercase();
    e.values()
        .filter(|v| v.number() != 0)
        .find(|v| enum_short_name(e, v.name()) == wanted)
        .map(|v| Value::EnumNumber(v.number()))
}

/// `RefuseMode` → `REFUSE_MODE`.
fn upper_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// A value as the file wrote it, strings without quotes.
pub fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> FaultTable {
        toml::from_str(text).unwrap()
    }

    fn spec(text: &str) -> proto::FaultSpec {
        to_spec(&table(text), 0..text.len(), "scenario").unwrap().0
    }

    fn error(text: &str) -> Located {
        to_spec(&table(text), 0..text.len(), "scenario").unwrap_err()
    }

    #[test]
    fn a_fault_is_what_faultctl_would_send() {
        let got = spec(
            "action = \"drop\"\nport = 2380\ndirection = \"to-port\"\npeer = \"127.0.0.3\"\nprobability = 0.5",
        );
        let want = proto::FaultSpec {
            target: Some(proto::Target {
                port: 2380,
                direction: proto::Direction::ToPort.into(),
                peer: "127.0.0.3".into(),
                ..Default::default()
            }),
            action: Some(proto::Action {
                kind: Some(proto::action::Kind::Drop(proto::Drop {
                    probability: Some(0.5),
                })),
            }),
            label: "scenario".into(),
            ..Default::default()
        };
        assert_eq!(got, want);
    }

    #[test]
    fn a_port_range_is_written_as_faultctl_writes_it() {
        let target = |text: &str| spec(text).target.unwrap();
        let range = target("action = \"drop\"\nport = \"2379-2381\"");
        assert_eq!((range.port, range.port_end), (2379, 2381));
        let one = target("action = \"drop\"\nport = \"2379\"");
        assert_eq!((one.port, one.port_end), (2379, 0));
        // The same range as two keys.
        let keys = target("action = \"drop\"\nport = 2379\nport-end = 2381");
        assert_eq!((keys.port, keys.port_end), (2379, 2381));

        let e = error("action = \"drop\"\nport = \"2381-2379\"");
        assert!(
            e.message
                .starts_with("port: the range 2381-2379 ends before"),
            "{}",
            e.message
        );
        let e = error("action = \"drop\"\nport = \"http\"");
        assert!(
            e.message.starts_with("port: \"http\" is not a port"),
            "{}",
            e.message
        );
        let e = error("action = \"drop\"\nport-end = 2381\nport = \"2379-2380\"");
        assert!(
            e.message.contains("`port-end` is given too"),
            "{}",
            e.message
        );
    }

    #[test]
    fn durations_rates_and_enums_read_like_faultctl() {
        let delay = spec("action = \"delay\"\nport = 80\nlatency = \"200ms\"\njitter-us = 50");
        let Some(proto::action::Kind::Delay(d)) = delay.action.unwrap().kind else {
            panic!("not a delay");
        };
        assert_eq!((d.latency_us, d.jitter_us), (200_000, 50));

        let rate = spec("action = \"rate\"\nport = 80\nbits-per-second = \"1mbit\"");
        let Some(proto::action::Kind::Rate(r)) = rate.action.unwrap().kind else {
            panic!("not a rate");
        };
        assert_eq!(r.bits_per_second, 1_000_000);

        let limit = spec(
            "action = \"limit-age\"\nport = 80\nafter = \"2s\"\nthen = \"drop\"\nprotocol = \"udp\"\nlabel = \"mine\"",
        );
        let Some(proto::action::Kind::LimitAge(l)) = limit.action.unwrap().kind else {
            panic!("not a limit-age");
        };
        assert_eq!((l.after_ms, l.then), (2000, proto::Then::Drop as i32));
        assert_eq!(limit.target.unwrap().protocol, proto::Protocol::Udp as i32);
        assert_eq!(limit.label, "mine");

        let refuse = spec("action = \"refuse\"\nport = 80\nmode = \"drop\"");
        let Some(proto::action::Kind::Refuse(r)) = refuse.action.unwrap().kind else {
            panic!("not a refuse");
        };
        assert_eq!(r.mode, proto::RefuseMode::Drop as i32);
    }

    #[test]
    fn every_action_of_the_api_is_a_scenario_action() {
        let names = action_names();
        for name in ["drop", "reset", "refuse", "limit-bytes", "stall", "corrupt"] {
            assert!(names.contains(&name.to_string()), "{names:?}");
        }
        for name in &names {
            let text = format!("action = \"{name}\"\nport = 80");
            let got = spec(&text);
            assert!(got.action.unwrap().kind.is_some(), "{name}");
        }
    }

    #[test]
    fn mistakes_name_the_field_and_point_at_it() {
        let text = "action = \"drp\"\nport = 80";
        let e = error(text);
        assert!(
            e.message.starts_with("action: \"drp\" is not an action"),
            "{e:?}"
        );
        assert_eq!(&text[e.span], "\"drp\"");

        let text = "action = \"drop\"\nport = 80\nprobabilty = 0.5";
        let e = error(text);
        assert!(
            e.message.starts_with("unknown field `probabilty` for drop"),
            "{e:?}"
        );
        assert!(e.message.contains("probability"), "{e:?}");
        assert_eq!(&text[e.span], "probabilty");

        let text = "action = \"delay\"\nport = 80\nlatency = \"soon\"";
        let e = error(text);
        assert!(
            e.message
                .starts_with("latency_us: \"soon\" is not a duration"),
            "{e:?}"
        );
        assert_eq!(&text[e.span], "\"soon\"");

        let e = error("action = \"drop\"\nport = -1");
        assert!(
            e.message.starts_with("port: expected an integer that fits"),
            "{e:?}"
        );
        let e = error("action = \"drop\"\nport = 80\ndirection = \"sideways\"");
        assert!(
            e.message.contains("one of both, to-port, from-port"),
            "{e:?}"
        );
        let e = error("port = 80");
        assert!(e.message.starts_with("missing field `action`"), "{e:?}");
        // A message field of FaultSpec is the table itself, not a key.
        let e = error("action = \"drop\"\ntarget = 1");
        assert!(e.message.starts_with("unknown field `target`"), "{e:?}");
    }
}
