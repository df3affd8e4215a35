@echo off
rem One-time setup on Windows: install.py makes .venv with the PyTorch build for this machine (CUDA for an
rem NVIDIA card) and the pinned dependencies. Double-click it, or run it in a terminal with install.py's
rem options, e.g.  setup.bat --dry-run   or   setup.bat --with sage   (setup.bat --help lists them).
rem set PYTHON=py -3.12  first to choose the Python that makes .venv.
setlocal
cd /d "%~dp0"

rem Double-clicked, Explorer runs  cmd /c ""...\setup.bat" "  : keep the window open at the end then.
set "PAUSE_AT_END="
setlocal EnableDelayedExpansion
if /i not "!CMDCMDLINE:%~nx0=!"=="!CMDCMDLINE!" (endlocal & set "PAUSE_AT_END=1") else endlocal

if defined PYTHON (
    set "PY=%PYTHON%"
) else (
    py -3 --version >nul 2>&1 && (set "PY=py -3") || (set "PY=python")
)
rem The Microsoft Store's "python" placeholder fails this check as well as a missing Python does.
%PY% -c "import sys; sys.exit(sys.version_info[:2] < (3, 10))" >nul 2>&1
if errorlevel 1 (
    echo error: FramePack needs Python 3.10 or newer ^(tried: %PY%^). Install it from https://www.python.org/downloads/
    echo ^(tick "Add python.exe to PATH"^), then run setup.bat again.
    set "RC=1"
) else (
    %PY% install.py %*
    call set "RC=%%ERRORLEVEL%%"
)

if defined PAUSE_AT_END pause
exit /b %RC%
