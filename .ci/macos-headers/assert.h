/* A stand-in for the macOS SDK's header, for `.ci/macos-check` only. */
#pragma once
#define assert(e) ((void)0)
