//! A small CNI runtime: drives a conflist the way libcni does.

use super::netns::NetNs;
use super::node::Pod;
use super::plugin::{default_cni_path, run_plugin, Invocation, Output};
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};

/// A conflist driven the way libcni drives one.
pub struct Runtime<'a> {
    pub host: &'a NetNs,
    pub cni_path: String,
}

/// Per-attachment runtime inputs.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    /// Capability name → value, e.g. `portMappings`. Passed in `runtimeConfig`
    /// only to plugins whose `capabilities` declare it.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    pub fn for_pod(pod: &Pod) -> RuntimeConf {
        RuntimeConf {
            container_id: pod.container_id.clone(),
            netns: pod.ns.path(),
            ifname: pod.ifname.clone(),
            ..RuntimeConf::default()
        }
    }
}

/// A plugin in a conflist failed.
#[derive(Debug)]
pub struct ListFailure {
    pub plugin: String,
    pub output: String,
}

impl fmt::Display for ListFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plugin {} failed: {}", self.plugin, self.output)
    }
}

impl<'a> Runtime<'a> {
    pub fn new(host: &'a NetNs) -> Runtime<'a> {
        Runtime {
            host,
            cni_path: default_cni_path(),
        }
    }

    /// The executable for a plugin `type`, searched in `CNI_PATH` order.
    pub fn find_plugin(&self, plugin_type: &str) -> PathBuf {
        self.cni_path
            .split(':')
            .map(|dir| Path::new(dir).join(plugin_type))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("plugin {plugin_type:?} not found in {}", self.cni_path))
    }

    /// The stdin libcni would give `plugin`.
    fn plugin_conf(
        list: &Value,
        plugin: &Value,
        prev_result: Option<&Value>,
        rt: &RuntimeConf,
    ) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if let Some(prev) = prev_result {
            conf["prevResult"] = prev.clone();
        }
        let mut runtime_config = Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (cap, enabled) in caps {
                if enabled.as_bool() == Some(true) {
                    if let Some(value) = rt.capability_args.get(cap) {
                        runtime_config.insert(cap.clone(), value.clone());
                    }
                }
            }
        }
        if !runtime_config.is_empty() {
            conf["runtimeConfig"] = Value::Object(runtime_config);
        }
        conf
    }

    fn exec(
        &self,
        command: &str,
        list: &Value,
        plugin: &Value,
        prev: Option<&Value>,
        rt: &RuntimeConf,
    ) -> Result<Output, ListFailure> {
        let plugin_type = plugin["type"].as_str().unwrap_or_default().to_owned();
        let inv = Invocation {
            binary: self.find_plugin(&plugin_type),
            command: Some(command.to_owned()),
            container_id: rt.container_id.clone(),
            netns: rt.netns.clone(),
            ifname: rt.ifname.clone(),
            args: rt.args.clone(),
            cni_path: self.cni_path.clone(),
        };
        let stdin = Self::plugin_conf(list, plugin, prev, rt).to_string();
        let out = run_plugin(self.host, &inv, &stdin);
        if out.code == 0 {
            Ok(out)
        } else {
            Err(ListFailure {
                plugin: plugin_type,
                output: out.to_string(),
            })
        }
    }

    fn plugins(list: &Value) -> &[Value] {
        list["plugins"].as_array().map(Vec::as_slice).unwrap_or(&[])
    }

    /// ADD through every plugin in order; returns the last plugin's result.
    pub fn add_list(&self, list: &Value, rt: &RuntimeConf) -> Result<Value, ListFailure> {
        let mut prev: Option<Value> = None;
        for plugin in Self::plugins(list) {
            let out = self.exec("ADD", list, plugin, prev.as_ref(), rt)?;
            let result = out.stdout_json.clone().ok_or_else(|| ListFailure {
                plugin: plugin["type"].to_string(),
                output: format!("{out}\nADD printed no single JSON result"),
            })?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK through every plugin in order, with the cached ADD result,
    /// except plugins whose `type` is in `skip` (see the caller for why).
    pub fn check_list(
        &self,
        list: &Value,
        rt: &RuntimeConf,
        cached: &Value,
        skip: &[&str],
    ) -> Result<(), ListFailure> {
        for plugin in Self::plugins(list) {
            if skip.iter().any(|s| plugin["type"] == *s) {
                continue;
            }
            self.exec("CHECK", list, plugin, Some(cached), rt)?;
        }
        Ok(())
    }

    /// DEL through every plugin in reverse order, with the cached ADD result.
    pub fn del_list(
        &self,
        list: &Value,
        rt: &RuntimeConf,
        cached: Option<&Value>,
    ) -> Result<(), ListFailure> {
        for plugin in Self::plugins(list).iter().rev() {
            self.exec("DEL", list, plugin, cached, rt)?;
        }
        Ok(())
    }
}
