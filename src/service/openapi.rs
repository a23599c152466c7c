//! The OpenAPI 3.0 document of the service (`GET /openapi.json`).

use serde_json::{Value, json};

fn error_responses(codes: &[&str]) -> Value {
    let mut out = serde_json::Map::new();
    for code in codes {
        let what = match *code {
            "400" => "Malformed request or a value out of range",
            "401" => "Missing or wrong API key (servers started with --api-key)",
            "404" => "No generator loaded",
            "413" => "Body over --max-body-mb",
            "503" => "Queue full, timed out or shutting down (Retry-After: 1)",
            _ => "Server fault (device failure)",
        };
        out.insert(
            code.to_string(),
            json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    Value::Object(out)
}

fn with_errors(ok: Value, codes: &[&str]) -> Value {
    let mut responses = error_responses(codes);
    responses.as_object_mut().expect("object").insert("200".into(), ok);
    responses
}

fn image_body() -> Value {
    json!({"required": true, "description": "An image file's bytes: PNG, JPEG or WebP (center-cropped to the tokenizer's size as the CLI does)",
           "content": {"image/png": {"schema": {"type": "string", "format": "binary"}},
                       "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                       "image/webp": {"schema": {"type": "string", "format": "binary"}},
                       "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}})
}

fn png() -> Value {
    json!({"image/png": {"schema": {"type": "string", "format": "binary"}}})
}

/// The document.
pub fn document() -> Value {
    let errors = ["400", "401", "413", "500", "503"];
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "rectok serve",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "RecTok tokenizer and DiT^DH generator over HTTP. Errors share one shape: \
                {\"error\": {\"code\", \"message\"}}. Requests of one kind are batched (--max-batch, --batch-window-ms)."
        },
        "paths": {
            "/v1/encode": {"post": {
                "summary": "Image → latent (posterior mean, or a sample)",
                "parameters": [
                    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["safetensors", "json"]}, "description": "Answer format (default safetensors; also JSON for Accept: application/json)"},
                    {"name": "sample", "in": "query", "schema": {"type": "boolean"}, "description": "A posterior sample instead of the mean"},
                    {"name": "seed", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "Noise seed of sample=true (rectok encode --sample --seed)"},
                    {"name": "raw", "in": "query", "schema": {"type": "boolean"}, "description": "Raw latents even when the tokenizer has latent statistics"}
                ],
                "requestBody": image_body(),
                "responses": with_errors(json!({"description": "A safetensors file with one f32 tensor `latent` [C, h, w] (metadata rectok.normalized, rectok.posterior), or JSON",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                                "application/json": {"schema": {"$ref": "#/components/schemas/Latent"}}}}), &errors)
            }},
            "/v1/decode": {"post": {
                "summary": "Latent → PNG",
                "parameters": [{"name": "raw", "in": "query", "schema": {"type": "boolean"}, "description": "Decode as raw latents whatever the input says"}],
                "requestBody": {"required": true, "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}, "description": "safetensors with one [C, h, w] tensor (f32, f16 or bf16)"},
                    "application/json": {"schema": {"$ref": "#/components/schemas/Latent"}}}},
                "responses": with_errors(json!({"description": "The decoded image", "content": png()}), &errors)
            }},
            "/v1/reconstruct": {"post": {
                "summary": "Image → reconstruction with PSNR and SSIM",
                "parameters": [{"name": "format", "in": "query", "schema": {"type": "string", "enum": ["png", "json"]}}],
                "requestBody": image_body(),
                "responses": with_errors(json!({"description": "The reconstruction; PSNR (dB) and SSIM in the X-PSNR and X-SSIM headers, or JSON {psnr, ssim, png_base64}",
                    "headers": {"X-PSNR": {"schema": {"type": "number"}}, "X-SSIM": {"schema": {"type": "number"}}},
                    "content": png()}), &errors)
            }},
            "/v1/generate": {"post": {
                "summary": "Class-conditional samples as a PNG grid (one row per class) or JSON",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}}}},
                "responses": with_errors(json!({"description": "The grid, or JSON {columns, images: [{class, index, png_base64}]}", "content": png()}),
                    &["400", "401", "404", "413", "500", "503"])
            }},
            "/v1/models": {"get": {"summary": "The loaded models: configurations, latent statistics, parameters, limits",
                "responses": with_errors(json!({"description": "Models", "content": {"application/json": {"schema": {"type": "object"}}}}), &["401"])}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Readiness (503 while shutting down)", "responses": {"200": {"description": "ready"}, "503": {"description": "shutting down"}}}},
            "/metrics": {"get": {"summary": "Prometheus text: requests, latencies, batch sizes, queue depths",
                "responses": with_errors(json!({"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}), &["401"])}},
            "/": {"get": {"summary": "The web page", "responses": {"200": {"description": "HTML"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "Latent": {"type": "object", "required": ["shape", "values"], "properties": {
                    "shape": {"type": "array", "items": {"type": "integer"}, "description": "[C, h, w]"},
                    "values": {"type": "array", "items": {"type": "number"}},
                    "normalized": {"type": "boolean", "default": false}}},
                "GenerateRequest": {"type": "object", "required": ["classes"], "properties": {
                    "classes": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "samples_per_class": {"type": "integer", "minimum": 1, "default": 1},
                    "steps": {"type": "integer", "minimum": 2, "default": 150, "description": "Time-grid points (N − 1 steps), at most --max-steps; default 150 (rectok generate's) or --max-steps when lower"},
                    "cfg": {"type": "number", "minimum": 0, "maximum": 100, "default": 1, "description": "CFG weight, or AutoGuidance weight when the server has a guide"},
                    "cfg_interval": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2, "default": [0, 1]},
                    "seed": {"type": "integer", "minimum": 0, "default": 0, "description": "Sample i starts from the noise of (seed, i), as rectok generate"},
                    "sampler": {"type": "string", "enum": ["euler", "heun"], "default": "euler"},
                    "format": {"type": "string", "enum": ["png", "json"], "default": "png"}}}
            }
        }
    })
}
