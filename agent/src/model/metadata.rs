//! The `wattwise.*` metadata contract: parsing, config overrides, and the resolved input layout.
//!
//! Kept free of tract so it can be unit-tested on plain key/value pairs.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use wattwise_core::curve::MAX_NODE_WATTS;

pub const KEY_NAME: &str = "wattwise.name";
pub const KEY_VERSION: &str = "wattwise.version";
pub const KEY_TRAINING_DATA: &str = "wattwise.training_data";
pub const KEY_INPUTS: &str = "wattwise.inputs";
pub const KEY_INPUT_RANGES: &str = "wattwise.input_ranges";
pub const KEY_INPUT_DEFAULTS: &str = "wattwise.input_defaults";
pub const KEY_OUTPUT: &str = "wattwise.output";
pub const KEY_DEFAULT_PEAK_WATTS: &str = "wattwise.default_peak_watts";

/// Config keys the overrides are reported under (the agent config embeds [`ModelOverrides`] as
/// `model.overrides`).
pub const OVERRIDE_INPUTS: &str = "model.overrides.inputs";
pub const OVERRIDE_INPUT_RANGES: &str = "model.overrides.input_ranges";
pub const OVERRIDE_INPUT_DEFAULTS: &str = "model.overrides.input_defaults";

/// One model input column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Feature {
    /// CPU utilisation, fraction of capacity 0..1.
    CpuUtilisation,
    /// Inlet air temperature (ambient when the node has no inlet sensor), °C.
    InletCelsius,
    /// Temperature of CPU socket `n`, °C.
    CpuCelsius(u16),
    /// The node's idle / peak watts from config: lets one generic model follow each server's
    /// energy proportionality.
    IdleOverPeak,
}

impl Feature {
    /// Temperatures are the features that come from sensors and may therefore be missing.
    pub fn is_temperature(self) -> bool {
        matches!(self, Feature::InletCelsius | Feature::CpuCelsius(_))
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Feature::CpuUtilisation => f.write_str("cpu_utilisation"),
            Feature::InletCelsius => f.write_str("inlet_celsius"),
            Feature::CpuCelsius(n) => write!(f, "cpu{n}_celsius"),
            Feature::IdleOverPeak => f.write_str("idle_over_peak"),
        }
    }
}

/// The name is not in the feature vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownFeature(pub String);

impl FromStr for Feature {
    type Err = UnknownFeature;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu_utilisation" => return Ok(Feature::CpuUtilisation),
            "inlet_celsius" => return Ok(Feature::InletCelsius),
            "idle_over_peak" => return Ok(Feature::IdleOverPeak),
            _ => {}
        }
        // Only the canonical spelling (`cpu1_celsius`, not `cpu01_celsius` or `cpu+1_celsius`),
        // so two names can never denote the same socket.
        s.strip_prefix("cpu")
            .and_then(|rest| rest.strip_suffix("_celsius"))
            .filter(|digits| {
                !digits.is_empty()
                    && digits.bytes().all(|b| b.is_ascii_digit())
                    && (digits.len() == 1 || !digits.starts_with('0'))
            })
            .and_then(|digits| digits.parse().ok())
            .map(Feature::CpuCelsius)
            .ok_or_else(|| UnknownFeature(s.to_owned()))
    }
}

/// What the model's single output means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Absolute node watts.
    Watts,
    /// P / P_peak: the agent multiplies by the configured peak watts.
    FractionOfPeak,
}

impl fmt::Display for OutputKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputKind::Watts => "watts",
            OutputKind::FractionOfPeak => "fraction_of_peak",
        })
    }
}

/// Site-specific replacements for what a model's metadata says about its inputs, e.g. a model
/// trained on another sensor layout, or a default inlet temperature for a hotter machine room.
///
/// Each field, when set, replaces the metadata entry as a whole (no per-feature merging), so what
/// runs is exactly what the config says.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelOverrides {
    /// Feature names in input order (replaces `wattwise.inputs`).
    pub inputs: Option<Vec<String>>,
    /// Feature → [min, max] (replaces `wattwise.input_ranges`).
    pub input_ranges: Option<BTreeMap<String, [f64; 2]>>,
    /// Feature → value used when its sensor is missing (replaces `wattwise.input_defaults`).
    pub input_defaults: Option<BTreeMap<String, f64>>,
}

/// A metadata problem, before the file name is attached.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataError {
    Missing { key: &'static str },
    Invalid { key: &'static str, problem: String },
    UnknownFeature { key: &'static str, name: String },
}

/// One input column as the agent feeds it.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub feature: Feature,
    /// [min, max] to normalise with, if any.
    pub range: Option<[f64; 2]>,
    /// Value used when the sensor is missing (raw units, normalised like a reading).
    pub default: Option<f64>,
}

impl InputSpec {
    /// The value the model sees: x' = (x − min) / (max − min), or x when there is no range.
    /// Not clamped: a reading outside the training range is the model's to extrapolate.
    pub fn normalise(&self, x: f64) -> f64 {
        match self.range {
            Some([min, max]) => (x - min) / (max - min),
            None => x,
        }
    }
}

/// Everything the metadata (after overrides) says.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    pub training_data: Option<String>,
    pub inputs: Vec<InputSpec>,
    pub output: OutputKind,
    /// `wattwise.default_peak_watts`: the peak watts a `fraction_of_peak` model assumes when the
    /// config has none (a typical node of the model's class).
    pub default_peak_watts: Option<f64>,
}

impl Metadata {
    /// Parses `props` (ONNX `metadata_props` as key/value pairs) and applies `overrides`.
    pub fn parse<'a>(
        props: impl IntoIterator<Item = (&'a str, &'a str)>,
        overrides: &ModelOverrides,
    ) -> Result<Metadata, MetadataError> {
        let props: BTreeMap<&str, &str> = props.into_iter().collect();
        let required = |key: &'static str| -> Result<String, MetadataError> {
            match props.get(key).map(|v| v.trim()) {
                None => Err(MetadataError::Missing { key }),
                Some("") => Err(MetadataError::Invalid {
                    key,
                    problem: "is empty".into(),
                }),
                Some(v) => Ok(v.to_owned()),
            }
        };
        let name = required(KEY_NAME)?;
        let version = required(KEY_VERSION)?;
        let training_data = props
            .get(KEY_TRAINING_DATA)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        let output = match required(KEY_OUTPUT)?.as_str() {
            "watts" => OutputKind::Watts,
            "fraction_of_peak" => OutputKind::FractionOfPeak,
            other => {
                return Err(MetadataError::Invalid {
                    key: KEY_OUTPUT,
                    problem: format!("`{other}` is neither `watts` nor `fraction_of_peak`"),
                })
            }
        };

        let default_peak_watts = match props.get(KEY_DEFAULT_PEAK_WATTS).map(|v| v.trim()) {
            None => None,
            Some(text) => Some(parse_watts(KEY_DEFAULT_PEAK_WATTS, text)?),
        };

        let features = match &overrides.inputs {
            Some(names) => parse_features(OVERRIDE_INPUTS, names.iter().map(String::as_str))?,
            None => {
                let list = required(KEY_INPUTS)?;
                parse_features(KEY_INPUTS, list.split(',').map(str::trim))?
            }
        };
        let ranges = match &overrides.input_ranges {
            Some(map) => map.clone(),
            None => json_map(&props, KEY_INPUT_RANGES)?,
        };
        let ranges_key = if overrides.input_ranges.is_some() {
            OVERRIDE_INPUT_RANGES
        } else {
            KEY_INPUT_RANGES
        };
        let defaults = match &overrides.input_defaults {
            Some(map) => map.clone(),
            None => json_map(&props, KEY_INPUT_DEFAULTS)?,
        };
        let defaults_key = if overrides.input_defaults.is_some() {
            OVERRIDE_INPUT_DEFAULTS
        } else {
            KEY_INPUT_DEFAULTS
        };

        let mut inputs: Vec<InputSpec> = features
            .iter()
            .map(|&feature| InputSpec {
                feature,
                range: None,
                default: None,
            })
            .collect();
        for (name, [min, max]) in ranges {
            let spec = input_named(&mut inputs, ranges_key, &name)?;
            if !(min.is_finite() && max.is_finite() && min < max) {
                return Err(MetadataError::Invalid {
                    key: ranges_key,
                    problem: format!("range of {name} is [{min}, {max}]; needs finite min < max"),
                });
            }
            spec.range = Some([min, max]);
        }
        for (name, value) in defaults {
            let spec = input_named(&mut inputs, defaults_key, &name)?;
            if spec.feature == Feature::CpuUtilisation {
                return Err(MetadataError::Invalid {
                    key: defaults_key,
                    problem: "cpu_utilisation is always measured and takes no default".into(),
                });
            }
            if !value.is_finite() {
                return Err(MetadataError::Invalid {
                    key: defaults_key,
                    problem: format!("default of {name} is {value}, not a finite number"),
                });
            }
            spec.default = Some(value);
        }
        Ok(Metadata {
            name,
            version,
            training_data,
            inputs,
            output,
            default_peak_watts,
        })
    }
}

/// A plausible node wattage written as a decimal number.
fn parse_watts(key: &'static str, text: &str) -> Result<f64, MetadataError> {
    let watts: f64 = text.parse().map_err(|_| MetadataError::Invalid {
        key,
        problem: format!("`{text}` is not a decimal number of watts"),
    })?;
    if !(watts.is_finite() && watts > 0.0 && watts <= MAX_NODE_WATTS) {
        return Err(MetadataError::Invalid {
            key,
            problem: format!(
                "{text} W is not a plausible node wattage (0 < W <= {MAX_NODE_WATTS})"
            ),
        });
    }
    Ok(watts)
}

fn parse_features<'a>(
    key: &'static str,
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<Feature>, MetadataError> {
    let mut features = Vec::new();
    for name in names {
        let feature: Feature = name
            .parse()
            .map_err(|UnknownFeature(name)| MetadataError::UnknownFeature { key, name })?;
        if features.contains(&feature) {
            return Err(MetadataError::Invalid {
                key,
                problem: format!("lists {feature} twice"),
            });
        }
        features.push(feature);
    }
    if !features.contains(&Feature::CpuUtilisation) {
        // A power curve is watts over utilisation: without it every point would be the same.
        return Err(MetadataError::Invalid {
            key,
            problem: "does not include cpu_utilisation".into(),
        });
    }
    Ok(features)
}

/// An optional JSON object metadata value; absent means empty.
fn json_map<T: serde::de::DeserializeOwned>(
    props: &BTreeMap<&str, &str>,
    key: &'static str,
) -> Result<BTreeMap<String, T>, MetadataError> {
    match props.get(key) {
        None => Ok(BTreeMap::new()),
        Some(text) => serde_json::from_str(text).map_err(|e| MetadataError::Invalid {
            key,
            problem: format!("not the expected JSON object: {e}"),
        }),
    }
}

/// The input spec for `name`, which must be one of the model's inputs: a range or default for a
/// feature the model does not take is almost certainly a typo.
fn input_named<'s>(
    inputs: &'s mut [InputSpec],
    key: &'static str,
    name: &str,
) -> Result<&'s mut InputSpec, MetadataError> {
    let feature: Feature = name
        .parse()
        .map_err(|UnknownFeature(name)| MetadataError::UnknownFeature { key, name })?;
    inputs
        .iter_mut()
        .find(|spec| spec.feature == feature)
        .ok_or_else(|| MetadataError::Invalid {
            key,
            problem: format!("names {feature}, which is not one of the model's inputs"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props() -> Vec<(&'static str, &'static str)> {
        vec![
            (KEY_NAME, "generic"),
            (KEY_VERSION, "3"),
            (KEY_TRAINING_DATA, "https://example.org/specpower"),
            (
                KEY_INPUTS,
                "cpu_utilisation, inlet_celsius,cpu1_celsius,idle_over_peak",
            ),
            (
                KEY_INPUT_RANGES,
                r#"{"inlet_celsius": [10, 40], "cpu1_celsius": [20, 100]}"#,
            ),
            (KEY_INPUT_DEFAULTS, r#"{"inlet_celsius": 25}"#),
            (KEY_OUTPUT, "fraction_of_peak"),
            (KEY_DEFAULT_PEAK_WATTS, " 312.5 "),
            ("wattwise.future_key", "ignored"),
        ]
    }

    fn without(key: &str) -> Vec<(&'static str, &'static str)> {
        props().into_iter().filter(|(k, _)| *k != key).collect()
    }

    fn with(key: &'static str, value: &'static str) -> Vec<(&'static str, &'static str)> {
        let mut p = without(key);
        p.push((key, value));
        p
    }

    #[test]
    fn parses_the_full_contract() {
        let m = Metadata::parse(props(), &ModelOverrides::default()).unwrap();
        assert_eq!(m.name, "generic");
        assert_eq!(m.version, "3");
        assert_eq!(
            m.training_data.as_deref(),
            Some("https://example.org/specpower")
        );
        assert_eq!(m.output, OutputKind::FractionOfPeak);
        assert_eq!(m.default_peak_watts, Some(312.5));
        let features: Vec<_> = m.inputs.iter().map(|s| s.feature).collect();
        assert_eq!(
            features,
            [
                Feature::CpuUtilisation,
                Feature::InletCelsius,
                Feature::CpuCelsius(1),
                Feature::IdleOverPeak
            ]
        );
        assert_eq!(m.inputs[1].range, Some([10.0, 40.0]));
        assert_eq!(m.inputs[1].default, Some(25.0));
        assert_eq!(m.inputs[2].default, None);
        assert_eq!(m.inputs[0].range, None);
    }

    #[test]
    fn feature_names_round_trip_and_reject_non_canonical_spellings() {
        for name in [
            "cpu_utilisation",
            "inlet_celsius",
            "cpu0_celsius",
            "cpu17_celsius",
            "idle_over_peak",
        ] {
            assert_eq!(name.parse::<Feature>().unwrap().to_string(), name);
        }
        for bad in [
            "cpu01_celsius",
            "cpu+1_celsius",
            "cpu_celsius",
            "cpux_celsius",
            "outlet_celsius",
            "",
        ] {
            assert_eq!(
                bad.parse::<Feature>(),
                Err(UnknownFeature(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn normalises_only_features_with_a_range() {
        let m = Metadata::parse(props(), &ModelOverrides::default()).unwrap();
        assert!((m.inputs[1].normalise(25.0) - 0.5).abs() < 1e-12);
        assert!((m.inputs[2].normalise(100.0) - 1.0).abs() < 1e-12);
        assert_eq!(m.inputs[0].normalise(0.3), 0.3);
    }

    #[test]
    fn missing_and_invalid_keys_are_named() {
        let none = ModelOverrides::default();
        for key in [KEY_NAME, KEY_VERSION, KEY_INPUTS, KEY_OUTPUT] {
            assert_eq!(
                Metadata::parse(without(key), &none),
                Err(MetadataError::Missing { key })
            );
        }
        assert!(Metadata::parse(without(KEY_TRAINING_DATA), &none).is_ok());
        assert_eq!(
            Metadata::parse(without(KEY_DEFAULT_PEAK_WATTS), &none)
                .unwrap()
                .default_peak_watts,
            None
        );
        let invalid = [
            (KEY_OUTPUT, "kilowatts"),
            (KEY_NAME, "  "),
            (KEY_INPUTS, "inlet_celsius"),
            (KEY_INPUTS, "cpu_utilisation,cpu_utilisation"),
            (KEY_INPUT_RANGES, "[1, 2]"),
            (KEY_INPUT_RANGES, r#"{"inlet_celsius": [40, 10]}"#),
            (KEY_INPUT_RANGES, r#"{"cpu0_celsius": [0, 1]}"#),
            (KEY_INPUT_DEFAULTS, r#"{"inlet_celsius": "warm"}"#),
            (KEY_INPUT_DEFAULTS, r#"{"cpu_utilisation": 0.5}"#),
            (KEY_DEFAULT_PEAK_WATTS, ""),
            (KEY_DEFAULT_PEAK_WATTS, "300 W"),
            (KEY_DEFAULT_PEAK_WATTS, "0"),
            (KEY_DEFAULT_PEAK_WATTS, "-250"),
            (KEY_DEFAULT_PEAK_WATTS, "NaN"),
            (KEY_DEFAULT_PEAK_WATTS, "inf"),
            (KEY_DEFAULT_PEAK_WATTS, "1e9"),
        ];
        for (key, value) in invalid {
            match Metadata::parse(with(key, value), &none) {
                Err(MetadataError::Invalid { key: k, .. }) => assert_eq!(k, key, "{value}"),
                other => panic!("{key}={value}: {other:?}"),
            }
        }
        assert_eq!(
            Metadata::parse(with(KEY_INPUTS, "cpu_utilisation,gpu_celsius"), &none),
            Err(MetadataError::UnknownFeature {
                key: KEY_INPUTS,
                name: "gpu_celsius".into()
            })
        );
    }

    #[test]
    fn overrides_replace_whole_entries_and_are_named_in_errors() {
        let overrides = ModelOverrides {
            inputs: Some(vec!["cpu_utilisation".into(), "cpu0_celsius".into()]),
            input_ranges: Some(BTreeMap::from([("cpu0_celsius".into(), [30.0, 90.0])])),
            input_defaults: Some(BTreeMap::from([("cpu0_celsius".into(), 55.0)])),
        };
        let m = Metadata::parse(without(KEY_INPUTS), &overrides).unwrap();
        assert_eq!(
            m.inputs,
            [
                InputSpec {
                    feature: Feature::CpuUtilisation,
                    range: None,
                    default: None
                },
                InputSpec {
                    feature: Feature::CpuCelsius(0),
                    range: Some([30.0, 90.0]),
                    default: Some(55.0)
                },
            ]
        );
        let bad = ModelOverrides {
            inputs: Some(vec!["cpu_utilisation".into(), "gpu0_celsius".into()]),
            ..ModelOverrides::default()
        };
        assert_eq!(
            Metadata::parse(props(), &bad),
            Err(MetadataError::UnknownFeature {
                key: OVERRIDE_INPUTS,
                name: "gpu0_celsius".into()
            })
        );
    }

    #[test]
    fn overrides_deserialise_strictly() {
        let o: ModelOverrides =
            serde_json::from_str(r#"{"input_defaults": {"inlet_celsius": 30}}"#).unwrap();
        assert_eq!(o.input_defaults.unwrap()["inlet_celsius"], 30.0);
        assert!(serde_json::from_str::<ModelOverrides>(r#"{"input_default": {}}"#).is_err());
    }
}
